"""
Segment your videos with a trained qshift model: a class map per frame, and the video beside its segmentation.

    python predict.py INPUT [INPUT ...] --checkpoint CKPT [--out DIR] [--short-side N]
        [--amp [off|auto|bf16|fp16]] [--device D]

INPUT is a video file (whatever FFmpeg decodes: mp4, webm, avi, gif, ...) or a folder of frames (.jpg, .png) in
natural order (frame2 before frame10), as own clips are read. CKPT is a folder written by train.py (RUN/best) or by
QShiftSegmenter.save_pretrained, or a Hugging Face hub id. For each INPUT, named NAME (its name without suffix):

    DIR/NAME/<frame>.png   the class ids, at the input's full size, as palette PNGs (the pixel values are the ids;
                           viewers show the class colours), named after the folder's frames, or 00000.png,
                           00001.png, ... for a video
    DIR/NAME.mp4           each frame beside itself blended with its class colours, over a legend of the classes
                           in view, at the size the model saw, each frame at its time in the input

and one line: the frames, frames per second and where they went. DIR is predictions/ unless given.

The frames stream through streaming.predict_video, decoded by one thread and written by another while the model runs,
so memory holds a few frames whatever the video's length; a causal model runs online, one frame at a time, and each
map is written as soon as its frame has been read. Frames whose short side is longer than --short-side (default
480, the paper's VSPW_480p and the size train.py's crops see) are scaled down before the model, so that 1080p or 4K
video costs what 480p does; their maps are scaled back to the input's size (nearest: their detail is that of the
model's input). --short-side 0 keeps every frame as it is. The video keeps the input's timestamps, so that it lasts
as long as the input and stays in step with it where frames were dropped or the frame rate varies (as phones and
surveillance cameras record); a folder's frames are 10 a second. There is a map for every decoded frame.

A bad input (a missing, unreadable or corrupt video, an empty folder) stops the run with one line and exit status 2,
and nothing of it is left behind; the inputs before it are complete. Existing outputs stay unless --overwrite. A video
that stops decoding part way (a recording cut short) keeps what decoded: the maps and the video of the frames before
the fault are written, one line `error: FILE: decoding stopped at frame N (why); kept the N frames before it` says
so, and the run goes on with the next inputs, then ends with exit status 1. One of which no frame decodes is a bad
input.
"""
from pathlib import Path

from cli import add_amp, check_at_least, check_checkpoint, device_name, fail, first_line, is_local, make_parser

FOLDER_FPS = 10  # frames per second of the video made from a folder of frames


def output_name(path):
    """NAME of an input, in DIR/NAME and DIR/NAME.mp4: a video file's name without suffix, a folder's name."""
    path = Path(path)
    return path.resolve().name if path.is_dir() else path.stem


def parse_args(argv=None):
    """predict.py's flags and inputs, checked; a bad one exits with one line. It needs no torch: see cli.py."""
    parser = make_parser(__doc__, epilog=__doc__.strip().split("\n\n")[-1])  # --help ends with what bad input does
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="video files or folders of frames")
    parser.add_argument("--checkpoint", required=True, help="RUN/best, a save_pretrained folder, or a hub id")
    parser.add_argument("--out", default="predictions", help="output folder (predictions)")
    parser.add_argument("--short-side", type=int, default=480, help="scale frames down to this short side before "
                        "the model (480; 0: never)")
    parser.add_argument("--chunk", type=int, default=8, help="frames the image model runs on at once (8; a causal "
                        "model takes 1, to stay online)")
    parser.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run")
    add_amp(parser)
    parser.add_argument("--device", type=device_name, help="cpu, cuda or cuda:N (default: cuda when present)")
    args = parser.parse_args(argv)
    check_at_least(args, {"--short-side": 0, "--chunk": 1})
    if is_local(args.checkpoint):  # a hub id is checked on loading
        check_checkpoint("--checkpoint", args.checkpoint)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        fail(f"--out {out}: not a folder")
    names = {}
    for path in map(Path, args.inputs):
        if not path.exists():
            fail(f"{path}: no such video file or folder of frames")
        name = output_name(path)
        if name in names:
            fail(f"{path} and {names[name]} would both write {out / name}: give them different names")
        names[name] = path
        for written in (out / name, out / f"{name}.mp4"):
            if written.exists() and not args.overwrite:
                fail(f"{path}: {written} exists (from an earlier run?); --overwrite replaces it")
    return args


# Flags and inputs are checked before the imports below (2-4 s, torch and transformers), so that --help and mistakes
# answer at once; the same pattern as train.py's and evaluate.py's.
if __name__ == "__main__":
    args = parse_args()

import collections
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import av
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import cli
import data
import pictures
import qshift
import reading
from streaming import read_ahead, segment

# -----------------------------------------------------------------------------
# reading: video files through FFmpeg (PyAV), folders of frames as own clips are read


class Frames:
    """An input's frames, read as they are taken (one pass): iterating yields (name, uint8 RGB (H, W, 3), pts,
    duration) in order, pts and duration in time_base units (a video's own timestamps: they may skip where frames
    were dropped, or vary with the frame rate; None where the file does not say). count: the frames, or None where a
    video's container does not say; fps: the frames per second it claims.

    A bad input raises DataError, on opening or while the frames are read. A video that stops decoding part way (a
    recording cut short) ends early instead, once its decoded frames are out, and says why in `stopped`; one of which
    no frame decodes still raises."""

    def __init__(self, path):
        self.path, self.stopped, self.fault = Path(path), None, None
        if self.path.is_dir():
            files = reading.frame_files(self.path)  # natural order; DataError when there are none
            self.count, self.fps, self.time_base = len(files), FOLDER_FPS, Fraction(1, FOLDER_FPS)
            self.frames = self._images(files)
            return
        try:
            container = av.open(str(self.path))
        except (av.FFmpegError, OSError) as e:
            raise data.DataError(f"{self.path}: not a video that FFmpeg can read ({first_line(e)})") from None
        if not container.streams.video:
            container.close()
            raise data.DataError(f"{self.path}: no video stream in it")
        stream = container.streams.video[0]
        if stream.width * stream.height < 1280 * 720:  # FFmpeg's decoding threads, one per core, pay off for large
            stream.codec_context.thread_count = 1  # frames only: at 64x96 they cost 2.9 against 0.4 ms a frame here
        self.count, self.fps, self.time_base = stream.frames or None, stream.average_rate or 25, stream.time_base
        self.frames = self._video(container, stream)

    def __iter__(self):
        return self.frames

    def close(self):
        """Stop reading: closes the video file."""
        self.frames.close()

    def _images(self, files):
        """A folder's frames: (stem, rgb, t, 1), one every 1/FOLDER_FPS s."""
        for t, (stem, file) in enumerate(files.items()):
            yield stem, np.array(reading.open_image(file).convert("RGB")), t, 1

    def _video(self, container, stream):
        """A video's frames: ("00000", rgb, pts, duration), ...; closes the container."""
        t = 0
        try:
            for frame in self._decoded(container, stream):
                yield f"{t:05d}", frame.to_ndarray(format="rgb24"), frame.pts, frame.duration
                t += 1
        finally:
            container.close()
        if self.fault and t == 0:
            raise data.DataError(f"{self.path}: corrupt, not one frame decodes ({first_line(self.fault)})")
        if self.fault:
            self.stopped = f"{self.path}: decoding stopped at frame {t} ({first_line(self.fault)})"

    def _decoded(self, container, stream):
        """The frames of a video stream (av.VideoFrame), in order. An FFmpeg error part way (a file cut short) ends
        them, after the frames the decoder still held, and is kept as self.fault."""
        try:
            for packet in container.demux(stream):
                yield from stream.decode(packet)  # the last packet, an empty one, flushes the decoder
            return
        except av.FFmpegError as e:
            self.fault = e
        try:  # the frames decoded before the fault but held back (B-frames, decoding threads) are good: flush them
            yield from stream.decode(None)
        except av.FFmpegError:
            pass


def read_input(path):
    """The pictures of an input, for scripts that want only them: (frames, count, fps), frames yielding (name, uint8
    RGB (H, W, 3)) in order (see Frames). A bad input raises DataError, on opening or while the frames are read; a
    video that stops decoding part way, once its decoded frames are out."""
    frames = Frames(path)

    def images():
        for name, rgb, _, _ in frames:
            yield name, rgb
        if frames.stopped:
            raise data.DataError(frames.stopped)

    return images(), frames.count, frames.fps


def model_input(name, rgb, short_side):
    """One frame as the model takes it: {"name", "size": the input's (H, W), "rgb": uint8 (h, w, 3) scaled down to a
    short side of at most short_side (0: as it is; antialiased bilinear, as training's scales), "pixel_values":
    (3, h, w) normalised (qshift.frames_to_pixel_values)}."""
    H, W = rgb.shape[:2]
    frame = torch.from_numpy(rgb)
    size = data.scaled_size(H, W, short_side)
    if size != (H, W):
        frame = F.interpolate(frame.permute(2, 0, 1)[None], size=size, mode="bilinear", antialias=True)
        frame = frame[0].permute(1, 2, 0)  # (h, w, 3) uint8
    return {"name": name, "size": (H, W), "rgb": frame.numpy(),
            "pixel_values": qshift.frames_to_pixel_values(frame[None])[0]}


# -----------------------------------------------------------------------------
# writing: the maps as PNGs, the video beside its segmentation


class VideoWriter:
    """An H.264 mp4 of RGB frames (PyAV): write(frame uint8 (H, W, 3), pts, duration), one size throughout, then
    close(); the file is made with the first frame, whose size it takes.

    Each frame is shown from its pts for its duration, in time_base units (1/fps unless given), counted from the first
    frame's pts, so that a video of a variable frame rate or with dropped frames keeps its timing. Without them (None),
    a frame follows the one before, one 1/fps long."""

    def __init__(self, path, fps, time_base=None):
        self.path, self.fps, self.container = path, Fraction(fps).limit_denominator(100000), None
        self.time_base = Fraction(time_base) if time_base else 1 / self.fps
        self.step = max(1, round(1 / (self.fps * self.time_base)))  # 1/fps in time_base units
        self.start, self.last, self.end, self.durations = None, -1, 0, {}

    def write(self, frame, pts=None, duration=None):
        if self.container is None:
            self.container = av.open(str(self.path), "w")
            self.stream = self.container.add_stream("libx264", rate=self.fps)
            self.stream.height, self.stream.width = frame.shape[:2]
            # ultrafast: a quarter of veryfast's time at twice the bytes, so that writing hides behind the model; one
            # thread: x264's frame threads made the first video of a process differ from the next ones
            self.stream.pix_fmt, self.stream.options = "yuv420p", {"crf": "18", "preset": "ultrafast", "threads": "1"}
            # the input's own time base: its timestamps go through exactly, none rounded onto another
            self.stream.codec_context.time_base = self.time_base
            self.start = 0 if pts is None else pts
        # H.264 in mp4 needs increasing times: a frame without one, or at the time of the one before, comes after it
        pts = self.end if pts is None else max(pts - self.start, self.last + 1)
        duration = duration if duration and duration > 0 else self.step
        self.last, self.end, self.durations[pts] = pts, pts + duration, duration
        picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
        picture.pts, picture.time_base = pts, self.time_base
        self.mux(self.stream.encode(picture))

    def mux(self, packets):
        """Write the encoder's packets, each with its frame's duration: the mp4 takes the last one's from it, so that
        the video lasts until the last frame's end."""
        for packet in packets:
            packet.duration = self.durations.pop(packet.pts, 0)
            self.container.mux(packet)

    def close(self, complete=True):
        """Finish the file (complete: with the frames the encoder still holds; else only release it)."""
        if self.container is not None:
            if complete:
                self.mux(self.stream.encode(None))
            self.container.close()
            self.container = None


def write_frame(frame, pred, maps, video, overlay):
    """Write one frame's outputs: its map at the input's size as maps/<name>.png, its overlay (Overlay) into video
    at the frame's time."""
    full = torch.from_numpy(pred)[None, None]
    if tuple(frame["size"]) != pred.shape:  # scaled back to the input's size (nearest: class ids)
        full = F.interpolate(full, size=frame["size"], mode="nearest-exact")
    pictures.save_prediction(full[0, 0].numpy(), maps / f"{frame['name']}.png", overlay.colours)
    video.write(overlay(frame["rgb"], pred), frame["pts"], frame["duration"])


def predict_input(model, path, out, short_side=480, chunk=8, amp=None, overwrite=False):
    """Segment one input (see the module docstring) into out/NAME/ and out/NAME.mp4; returns the number of frames
    and None, or why a video stopped decoding part way (Frames.stopped: its decoded frames are written). amp: an
    autocast dtype (torch.bfloat16) or None.

    The outputs are written under temporary names and renamed when complete, so that a bad input (DataError) leaves
    nothing, and earlier outputs are replaced (with overwrite) only by complete ones."""
    frames = Frames(path)
    name, made_out = output_name(path), not out.exists()
    maps, video_path = out / name, out / f"{name}.mp4"
    tmp_maps, tmp_video = out / f".{name}.tmp", out / f".{name}.tmp.mp4"
    shutil.rmtree(tmp_maps, ignore_errors=True)
    tmp_maps.mkdir(parents=True)
    video = VideoWriter(tmp_video, frames.fps, frames.time_base)
    config = model.model.config
    class_names = [config.id2label[c] for c in range(config.num_labels)]
    colours = pictures.class_colours(np.array(config.palette, np.uint8) if getattr(config, "palette", None) else None)
    overlay = pictures.Overlay(class_names, colours)
    n, size = 0, None
    bar = tqdm(total=frames.count, unit="frame", desc=name, leave=False, disable=None)  # a bar on terminals only
    try:
        with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
            decoded = ({**model_input(frame_name, rgb, short_side), "pts": pts, "duration": duration}
                       for frame_name, rgb, pts, duration in frames)  # in the reader
            writes = collections.deque()
            ahead = read_ahead(decoded, reader, chunk + 2)
            for frame, pred in segment(model, ahead, chunk, amp, online=True):
                if size is None:
                    size = frame["size"]
                elif frame["size"] != size:
                    raise data.DataError(f"{path}: frame {frame['name']} is {frame['size'][1]}x{frame['size'][0]}, "
                                         f"the first {size[1]}x{size[0]}")
                writes.append(writer.submit(write_frame, frame, pred.to(torch.uint8).cpu().numpy(), tmp_maps,
                                            video, overlay))
                while len(writes) > chunk + 2 or (writes and writes[0].done()):  # a bounded backlog
                    writes.popleft().result()  # a failed write raises here
                n += 1
                bar.update()
            for write in writes:
                write.result()
        if n == 0:
            raise data.DataError(f"{path}: no frames in it")
        video.close()
    except BaseException:  # a bad input, or Ctrl-C: nothing of this input is left
        video.close(complete=False)
        shutil.rmtree(tmp_maps, ignore_errors=True)
        tmp_video.unlink(missing_ok=True)
        if made_out and not any(out.iterdir()):
            out.rmdir()
        raise
    finally:
        bar.close()
    for old, new in ((maps, tmp_maps), (video_path, tmp_video)):
        if overwrite and old.is_dir():
            shutil.rmtree(old)
        new.replace(old)
    return n, frames.stopped


# -----------------------------------------------------------------------------
# command line


def load_model(checkpoint, device):
    """The checkpoint's QShiftSegmenter on device, in eval mode; one line and exit status 2 if it cannot be."""
    model = cli.load_model("--checkpoint", checkpoint)
    config = model.model.config
    if not hasattr(config, "qshift"):  # a hub id's, checked only now that it is loaded
        fail(f"--checkpoint {checkpoint}: not a qshift checkpoint (its config.json has no qshift settings)")
    if config.num_labels > 256:
        fail(f"--checkpoint {checkpoint}: {config.num_labels} classes do not fit 8-bit PNGs")
    return model.to(device).eval()


def main(args):
    """Run the command line that parse_args read."""
    device = cli.device(args.device)
    for path in args.inputs:  # each input opened and its first frame read: most bad ones stop the run here
        try:
            frames = Frames(path)
            if next(iter(frames), None) is None:
                fail(f"{path}: no frames in it")
            frames.close()
        except data.DataError as e:
            fail(str(e))
    model = load_model(args.checkpoint, device)
    out, amp, stopped = Path(args.out), cli.amp_dtype(args.amp, device), 0
    for path in args.inputs:
        start = time.perf_counter()
        try:
            n, why = predict_input(model, Path(path), out, args.short_side, args.chunk, amp, args.overwrite)
        except data.DataError as e:
            fail(str(e))
        seconds = time.perf_counter() - start
        name = output_name(path)
        print(f"{path}: {n} frames in {seconds:.1f} s, {n / seconds:.1f} frames/s -> {out / name}/ and "
              f"{out / name}.mp4")
        sys.stdout.flush()
        if why:  # its frames are written; the run goes on, and its exit status tells a batch that one was cut short
            print(f"error: {why}; kept the {cli.count(n, 'frame')} before it", file=sys.stderr)
            stopped += 1
    if stopped:
        sys.exit(1)


if __name__ == "__main__":
    main(args)
