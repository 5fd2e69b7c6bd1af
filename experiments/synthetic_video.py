"""
Write videos of the synthetic world (data.py) as mp4 files: something to run predict.py on without a video of your own.

    python experiments/synthetic_video.py [--split test] [--videos 1] [--frames 48] [--out videos]
        -> videos/<split>-000.mp4, ...

The world is the one train.py trains and validates on (seed 0); the test split is seen by neither.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli import check_at_least, make_parser


def parse_args(argv=None):
    parser = make_parser(__doc__)
    parser.add_argument("--split", choices=["train", "val", "test"], default="test", help="(test)")
    parser.add_argument("--videos", type=int, default=1, help="how many (1)")
    parser.add_argument("--frames", type=int, default=48, help="frames per video (48)")
    parser.add_argument("--out", default="videos", help="output folder (videos)")
    args = parser.parse_args(argv)
    check_at_least(args, {"--videos": 1, "--frames": 2})
    return args


if __name__ == "__main__":
    args = parse_args()

import data
import predict


def write_videos(split, videos, frames, out, size=(64, 96), fps=10):
    """The first `videos` videos of the synthetic split, each `frames` frames of `size`, as out/<name>.mp4; returns
    their paths."""
    world = data.build_dataset("synthetic", split=split, clip_len=None, train=False, num_videos=videos,
                               num_frames=frames, size=size)
    Path(out).mkdir(parents=True, exist_ok=True)
    paths = []
    for (name, _), images in zip(world.videos, world.images):
        paths.append(Path(out) / f"{name}.mp4")
        writer = predict.VideoWriter(paths[-1], fps)
        for image in images:
            writer.write(image)
        writer.close()
    return paths


if __name__ == "__main__":
    for path in write_videos(args.split, args.videos, args.frames, args.out):
        print(f"wrote {path}")
