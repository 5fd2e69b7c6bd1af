"""
predict.py's speed against streaming.predict_video alone, side by side in one run: does reading and writing video hide
behind the model?

    python experiments/predict_speed.py --checkpoint RUN/best [--frames 96] [--size 64 96] [--repeats 5]

It writes a synthetic video (data.py's world, validation split) as an mp4, then times, in turn, predict.py on it
(predict_input: decoding, resizing, the model, PNG maps and the overlay video) and predict_video alone on the same
frames, decoded into memory beforehand. Each repeat times both, in alternating order, so that a change in the
machine's load falls on both; it prints each one's frames per second (median over the repeats) and the median and
range of the repeats' ratios.
"""
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli import check_at_least, check_checkpoint, make_parser


def parse_args(argv=None):
    parser = make_parser(__doc__)
    parser.add_argument("--checkpoint", required=True, help="RUN/best (train.py's)")
    parser.add_argument("--frames", type=int, default=96, help="frames of the video (96)")
    parser.add_argument("--size", type=int, nargs=2, default=[64, 96], metavar=("H", "W"), help="frame size (64 96)")
    parser.add_argument("--repeats", type=int, default=5, help="timings of each (5)")
    args = parser.parse_args(argv)
    check_at_least(args, {"--frames": 2, "--repeats": 1})
    check_checkpoint("--checkpoint", args.checkpoint)
    return args


if __name__ == "__main__":
    args = parse_args()

import statistics

import torch

import predict
import streaming
from synthetic_video import write_videos


def main(args):
    model = predict.load_model(args.checkpoint, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        [video] = write_videos("val", 1, args.frames, tmp, tuple(args.size))
        frames, _, _ = predict.read_input(video)  # as predict.py decodes them, kept in memory
        pixel_values = [predict.model_input(name, rgb, 480)["pixel_values"] for name, rgb in frames]
        for _ in streaming.predict_video(model, pixel_values[:8]):  # warm-up: the first run pays for allocations
            pass
        runs = {"predict.py": lambda r: predict.predict_input(model, video, Path(tmp) / f"out{r}"),
                "predict_video": lambda r: [None for _ in streaming.predict_video(model, pixel_values)]}
        seconds = {name: [] for name in runs}
        for r in range(args.repeats):
            for name in list(runs)[::1 if r % 2 == 0 else -1]:
                start = time.perf_counter()
                runs[name](r)
                seconds[name].append(time.perf_counter() - start)
    n = len(pixel_values)
    print(f"{n} frames of {args.size[0]}x{args.size[1]}, {args.checkpoint}, {torch.get_num_threads()} torch "
          f"thread(s), {args.repeats} repeats:")
    for name, times in seconds.items():
        print(f"  {name:14} {n / statistics.median(times):6.1f} frames/s  ({', '.join(f'{n / s:.1f}' for s in times)})")
    ratios = [b / a for a, b in zip(seconds["predict.py"], seconds["predict_video"])]
    print(f"  ratio predict.py / predict_video frames/s: median {statistics.median(ratios):.3f} "
          f"(from {min(ratios):.3f} to {max(ratios):.3f})")


if __name__ == "__main__":
    main(args)
