"""
predict.py's speed against qshift.predict_video alone, side by side in one run: does reading and writing video hide
behind the model?

    python experiments/predict_speed.py --checkpoint RUN/best [--frames 96] [--size 64 96] [--repeats 3]

It writes a synthetic video (data.py's world, validation split) as an mp4, then times, in turn, predict.py on it
(predict_input: decoding, resizing, the model, PNG maps and the overlay video) and predict_video alone on the same
frames, decoded into memory beforehand. It prints the frames per second of each, the median over the repeats, and
their ratio.
"""
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli import check_at_least, check_checkpoint, make_parser  # noqa: E402


def parse_args(argv=None):
    parser = make_parser(__doc__)
    parser.add_argument("--checkpoint", required=True, help="RUN/best (train.py's)")
    parser.add_argument("--frames", type=int, default=96, help="frames of the video (96)")
    parser.add_argument("--size", type=int, nargs=2, default=[64, 96], metavar=("H", "W"), help="frame size (64 96)")
    parser.add_argument("--repeats", type=int, default=3, help="timings of each (3)")
    args = parser.parse_args(argv)
    check_at_least(args, {"--frames": 2, "--repeats": 1})
    check_checkpoint("--checkpoint", args.checkpoint)
    return args


if __name__ == "__main__":
    args = parse_args()

import statistics  # noqa: E402

import torch  # noqa: E402

import predict  # noqa: E402
import qshift  # noqa: E402
from synthetic_video import write_videos  # noqa: E402


def main(args):
    torch.manual_seed(0)
    model = predict.load_model(args.checkpoint, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        [video] = write_videos("val", 1, args.frames, tmp, tuple(args.size))
        frames, _, _ = predict.read_input(video)  # as predict.py decodes them, kept in memory
        pixel_values = [predict.model_input(name, rgb, 480)["pixel_values"] for name, rgb in frames]
        for _ in qshift.predict_video(model, pixel_values[:8]):  # warm-up: the first run pays for allocations
            pass
        seconds = {"predict.py": [], "predict_video": []}
        for r in range(args.repeats):
            start = time.perf_counter()
            predict.predict_input(model, video, Path(tmp) / f"out{r}")
            seconds["predict.py"].append(time.perf_counter() - start)
            start = time.perf_counter()
            for _ in qshift.predict_video(model, pixel_values):
                pass
            seconds["predict_video"].append(time.perf_counter() - start)
    fps = {name: len(pixel_values) / statistics.median(times) for name, times in seconds.items()}
    print(f"{len(pixel_values)} frames of {args.size[0]}x{args.size[1]}, {args.checkpoint}, "
          f"{torch.get_num_threads()} torch thread(s), median of {args.repeats}:")
    for name, times in seconds.items():
        print(f"  {name:14} {fps[name]:6.1f} frames/s  ({', '.join(f'{len(pixel_values) / s:.1f}' for s in times)})")
    print(f"  ratio predict.py / predict_video: {fps['predict.py'] / fps['predict_video']:.3f}")


if __name__ == "__main__":
    main(args)
