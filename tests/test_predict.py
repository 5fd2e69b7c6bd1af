"""predict.py on video files and folders of frames, against streaming.predict_video on the same frames; its errors."""
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import data
import pictures
import predict
import qshift
import streaming
from streaming import segment
from tiny import build_model, tiny_config

T = 12  # frames of the test video


@pytest.fixture(scope="module")
def frames():
    """(T, 64, 96, 3) uint8 frames of a synthetic video."""
    world = data.build_dataset("synthetic", split="val", clip_len=None, train=False, num_videos=1, num_frames=T)
    return world.images[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    names = {0: "background", 1: "red", 2: "green", 3: "blue"}
    path = tmp_path_factory.mktemp("run") / "best"
    build_model(tiny_config(4, id2label=names), shift_div=8, match=True).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def video(frames, tmp_path_factory):
    path = tmp_path_factory.mktemp("videos") / "synthetic.mp4"
    writer = predict.VideoWriter(path, 10)
    for frame in frames:
        writer.write(frame)
    writer.close()
    return path


def write_video(path, frames, pts=None, codec="libx264", time_base=Fraction(1, 10), options=None):
    """frames (uint8 (n, H, W, 3)) as a video file, with PyAV: frame t at pts[t] (default t), in time_base units;
    options: the muxer's. x264's ultrafast preset: no B-frames, so the decoder holds no frame back."""
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=1 / time_base)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt, stream.codec_context.time_base = "yuv420p", time_base
        if codec == "libx264":
            stream.options = {"preset": "ultrafast"}
        for t, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(np.asarray(frame), format="rgb24")
            picture.pts, picture.time_base = t if pts is None else pts[t], time_base
            container.mux(stream.encode(picture))
        container.mux(stream.encode(None))
    return path


def fragmented_mp4(path, frames):
    """frames as an mp4 in fragments, as recorders write them so that a recording cut short still plays."""
    return write_video(path, frames, options={"movflags": "frag_keyframe+empty_moov"})


def cut_short(path, keep, to):
    """The first `keep` (a fraction) of a file's bytes, as the file `to`: a recording interrupted."""
    data = path.read_bytes()
    to.write_bytes(data[:int(len(data) * keep)])
    return to


def decoded(path):
    """Every frame of a video file, decoded with PyAV: uint8 (n, H, W, 3)."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def decodable(path):
    """The frames of a video file that decode before FFmpeg raises, with PyAV, and the error: (uint8 (n, H, W, 3),
    av.FFmpegError or None)."""
    frames, error = [], None
    with av.open(str(path)) as container:
        try:
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
        except av.FFmpegError as e:
            error = e
    return np.stack(frames), error


def timing(path):
    """A video file's frame times in seconds, and its end: the last frame's time plus its duration."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    last = frames[-1]
    return [float(frame.time) for frame in frames], float((last.pts + last.duration) * last.time_base)


def expected_maps(checkpoint, frames):
    """streaming.predict_video's maps of frames (uint8 (n, H, W, 3)), the whole video as one clip: (n, H, W)."""
    model = qshift.QShiftSegmenter.from_pretrained(checkpoint).eval()
    return torch.stack(list(streaming.predict_video(model, qshift.frames_to_pixel_values(frames)))).numpy()


def saved_maps(folder, names):
    return np.stack([np.asarray(Image.open(folder / f"{name}.png")) for name in names])


def run(*argv):
    argv = [str(a) for a in argv]
    predict.main(predict.parse_args(argv + ([] if "--device" in argv else ["--device", "cpu"])))


def test_maps_of_a_video_equal_predict_videos_on_the_same_decoded_frames(video, checkpoint, tmp_path, capsys):
    run(video, "--checkpoint", checkpoint, "--out", tmp_path)
    summary = capsys.readouterr().out.splitlines()
    assert len(summary) == 1 and summary[0].startswith(f"{video}: {T} frames in ") and "frames/s" in summary[0]
    maps = saved_maps(tmp_path / "synthetic", [f"{t:05d}" for t in range(T)])
    assert maps.dtype == np.uint8 and maps.shape == (T, 64, 96)
    frames = decoded(video)  # H.264 is lossy: the frames as the video holds them
    assert np.array_equal(maps, expected_maps(checkpoint, frames))
    assert len(np.unique(maps)) > 1
    overlay = decoded(tmp_path / "synthetic.mp4")
    assert len(overlay) == T and overlay.shape[1:] == (64 + 2 * 16 + 4, 2 * 96 + 2, 3)  # frame beside blend, legend
    assert np.abs(overlay[:, :64, :96].astype(int) - frames).mean() < 3  # the left half is the frame itself
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic", "synthetic.mp4"]  # no temporary file left


def test_a_folder_of_png_frames_gives_their_maps_named_after_them_in_natural_order(frames, checkpoint, tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    names = [f"frame{t + 1}" for t in range(T)]  # frame2 before frame10
    for name, frame in zip(names, frames):
        Image.fromarray(frame).save(folder / f"{name}.png")
    (folder / "notes.txt").write_text("not a frame")
    run(folder, "--checkpoint", checkpoint, "--out", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "clip").iterdir()) == sorted(f"{n}.png" for n in names)
    assert np.array_equal(saved_maps(tmp_path / "out" / "clip", names), expected_maps(checkpoint, frames))
    overlay = decoded(tmp_path / "out" / "clip.mp4")[:, :64, :96].astype(int)  # the left half: the frames
    differences = np.abs(overlay[:, None] - frames[None]).mean(axis=(2, 3, 4))  # (overlay frame, folder frame)
    assert differences.argmin(1).tolist() == list(range(T))  # in natural order


def test_a_video_with_dropped_frames_keeps_its_timing_in_the_overlay(frames, checkpoint, tmp_path):
    pts = [0, 11, 17, 24, 30, 31, 45, 52, 60, 61, 62, 80]  # in 1/15 s: frames dropped, as surveillance cameras do
    video = write_video(tmp_path / "dropped.avi", frames, pts, "mpeg4", Fraction(1, 15))
    run(video, "--checkpoint", checkpoint, "--out", tmp_path / "out")
    (input_times, input_end), (overlay_times, overlay_end) = timing(video), timing(tmp_path / "out" / "dropped.mp4")
    assert np.allclose(input_times, np.array(pts) / 15)  # the input holds the skipping times
    assert np.allclose(overlay_times, input_times, atol=1e-3)  # in step with it, frame by frame
    assert abs(overlay_end - input_end) <= 1 / 15  # as long as it, 5.4 s (not T / 15 s), to within a frame's time
    assert len(list((tmp_path / "out" / "dropped").iterdir())) == T  # a map for each decoded frame


def test_a_video_cut_short_keeps_what_decoded_says_where_and_exits_1(frames, video, checkpoint, tmp_path, capfd):
    cut = cut_short(fragmented_mp4(tmp_path / "whole.mp4", frames), 0.65, tmp_path / "cut.mp4")
    kept, error = decodable(cut)
    n = len(kept)
    assert error is not None and 0 < n < T  # FFmpeg decodes the first frames, then raises
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run(cut, video, "--checkpoint", checkpoint, "--out", tmp_path / "out")  # the run goes on after it
    stdout, stderr = capfd.readouterr()
    assert exit_.value.code == 1
    assert len(stderr.splitlines()) == 1 and stderr.startswith(f"error: {cut}: decoding stopped at frame {n} ("), stderr
    assert f"kept the {n} frames before it" in stderr
    lines = stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{cut}: {n} frames in ") and lines[1].startswith(f"{video}: {T} ")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["cut", "cut.mp4", "synthetic", "synthetic.mp4"]
    assert len(list((out / "cut").iterdir())) == n and len(decoded(out / "cut.mp4")) == n
    assert np.array_equal(saved_maps(out / "cut", [f"{t:05d}" for t in range(n)]), expected_maps(checkpoint, kept))
    assert len(list((out / "synthetic").iterdir())) == T


def test_large_frames_are_scaled_down_for_the_model_and_their_maps_back_to_full_size(video, checkpoint, tmp_path):
    run(video, "--checkpoint", checkpoint, "--out", tmp_path, "--short-side", "32")
    frames = torch.from_numpy(decoded(video)).permute(0, 3, 1, 2)
    small = F.interpolate(frames, size=(32, 48), mode="bilinear", antialias=True).permute(0, 2, 3, 1)
    maps = torch.from_numpy(expected_maps(checkpoint, small.numpy()).astype(np.uint8))
    full = F.interpolate(maps[:, None], size=(64, 96), mode="nearest-exact")[:, 0]
    assert np.array_equal(saved_maps(tmp_path / "synthetic", [f"{t:05d}" for t in range(T)]), full.numpy())
    assert decoded(tmp_path / "synthetic.mp4").shape[1:3] == (32 + 36, 2 * 48 + 2)  # at the size the model saw


def test_a_causal_model_is_online_each_map_comes_once_its_frame_is_read(frames):
    torch.manual_seed(0)
    read = []

    def model_inputs():  # counts the frames taken
        for t, frame in enumerate(frames):
            read.append(t)
            yield predict.model_input(f"{t}", frame, 0)

    for causal, chunk, lookahead in ((True, 8, 0), (False, 1, 1)):  # causal: one frame at a time, whatever chunk
        model = build_model(tiny_config(4), shift_div=8, match=True, causal=causal).eval()
        read.clear()
        for t, (frame, pred) in enumerate(segment(model, model_inputs(), chunk, online=True)):
            assert frame["name"] == f"{t}" and pred.shape == (64, 96)
            assert len(read) == min(T, t + 1 + lookahead)  # a bidirectional model waits for frame t+1


@pytest.fixture(scope="module")
def bad(checkpoint, video, frames, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "corrupt.mp4").write_bytes(video.read_bytes()[:300])  # cut inside the header
    cut_short(fragmented_mp4(root / "whole.mp4", frames), 0.05, root / "cut-in-frame-0.mp4")  # opens, nothing decodes
    (root / "whole.mp4").unlink()
    (root / "noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (root / "empty").mkdir()
    (root / "broken-frame").mkdir()  # its third frame is corrupt: found after two frames are written
    for t in range(4):
        Image.new("RGB", (32, 32), (t * 40, 0, 0)).save(root / "broken-frame" / f"{t}.png")
    (root / "broken-frame" / "2.png").write_bytes(b"\x89PNG not really")
    build_model(tiny_config(4), shift_div=8, match=True).model.save_pretrained(root / "image-model")
    (root / "taken").mkdir()
    (root / "taken" / "synthetic.mp4").write_text("keep me")
    (root / "synthetic").mkdir()  # a folder of the video's name
    Image.new("RGB", (32, 32)).save(root / "synthetic" / "0.png")
    return root


@pytest.mark.parametrize("argv,message", [
    (["{bad}/corrupt.mp4"], "corrupt.mp4: not a video that FFmpeg can read"),
    (["{bad}/noise.mp4"], "noise.mp4: not a video that FFmpeg can read"),
    (["{bad}/cut-in-frame-0.mp4"], "cut-in-frame-0.mp4: corrupt, not one frame decodes"),
    (["{bad}/empty"], "empty: no .jpg/.jpeg/.png files"),
    (["{bad}/broken-frame"], "2.png: unreadable image"),
    (["{video}", "{bad}/missing.mp4"], "missing.mp4: no such video file or folder"),
    (["{video}", "--checkpoint", "{bad}/missing"], "--checkpoint {bad}/missing: no such folder"),
    (["{video}", "--checkpoint", "{bad}/image-model"], "no qshift settings"),
    (["{video}", "--checkpoint", "org/not-in-the-cache"], "not in the Hugging Face cache"),
    (["{video}", "{bad}/synthetic"], "would both write"),
    (["{video}", "--out", "{bad}/taken"], "synthetic.mp4 exists"),
    (["{video}", "--short-side", "-1"], "--short-side -1: must be at least 0"),
    (["{video}", "--device", "tpu"], "--device: tpu: use cpu, cuda"),
])
def test_bad_input_is_one_line_exit_status_2_and_nothing_written(argv, message, bad, checkpoint, video, capfd):
    out = bad / "out"
    fill = dict(bad=bad, video=video)
    argv = [a.format(**fill) for a in argv]
    if "--checkpoint" not in argv:
        argv += ["--checkpoint", str(checkpoint)]
    if "--out" not in argv:
        argv += ["--out", str(out)]

    def files():
        return {(p, p.stat().st_mtime_ns) for p in bad.rglob("*")}

    before = files()
    with pytest.raises(SystemExit) as exit_:
        run(*argv)
    stdout, stderr = capfd.readouterr()
    assert exit_.value.code == 2 and stdout == ""
    assert len(stderr.splitlines()) == 1 and stderr.startswith("error: ") and message.format(**fill) in stderr, stderr
    assert files() == before  # nothing written, not even the output folder


def test_outputs_are_replaced_only_with_overwrite(video, checkpoint, tmp_path, capsys):
    (tmp_path / "synthetic").mkdir()
    (tmp_path / "synthetic" / "old.png").write_text("old")
    run(video, "--checkpoint", checkpoint, "--out", tmp_path, "--overwrite")
    assert len(list((tmp_path / "synthetic").iterdir())) == T and len(decoded(tmp_path / "synthetic.mp4")) == T
    assert "12 frames" in capsys.readouterr().out


def test_the_checkpoints_class_colours_colour_the_maps(video, checkpoint, tmp_path):
    model = qshift.QShiftSegmenter.from_pretrained(checkpoint)
    palette = [[10, 20, 30], [200, 0, 0], [0, 200, 0], [0, 0, 200]]
    model.model.config.palette = palette  # as train.py keeps a data set's own colours
    model.save_pretrained(tmp_path / "coloured")
    run(video, "--checkpoint", tmp_path / "coloured", "--out", tmp_path / "out")
    png = Image.open(tmp_path / "out" / "synthetic" / "00000.png")
    assert png.mode == "P" and np.array(png.getpalette()[:12]).reshape(4, 3).tolist() == palette


def test_the_videos_legend_keeps_its_size_and_its_order_whatever_is_in_view():
    names = [f"a class with a long name {c}" for c in range(30)]
    overlay = pictures.Overlay(names, pictures.class_colours())
    rgb = np.zeros((40, 60, 3), np.uint8)
    many = np.arange(40 * 60).reshape(40, 60) % 30  # 30 classes in view: more than two lines hold
    assert overlay(rgb, many).shape == overlay(rgb, np.zeros((40, 60), np.int64)).shape == (40 + 36, 122, 3)
    # one entry a line fits: the two classes of most pixels are shown, in the order of their ids
    assert np.array_equal(overlay.legend((3, 1, 0, 2), 122), overlay.legend((1, 3), 122))
    assert not np.array_equal(overlay.legend((3, 1, 0, 2), 122), overlay.legend((0, 1, 2, 3), 122))
