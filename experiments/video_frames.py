"""
Frames of a video in one picture, e.g. of predict.py's output video for the README.

    python experiments/video_frames.py VIDEO --frames 10 11 12 [--columns 3] [--scale 2] --out PICTURE.png

Frames are numbered from 0, laid out in rows of --columns with a white gap, and scaled up (nearest: class borders and
text stay sharp) by --scale.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli import check_at_least, fail, make_parser


def parse_args(argv=None):
    parser = make_parser(__doc__)
    parser.add_argument("video")
    parser.add_argument("--frames", type=int, nargs="+", required=True, help="which frames, from 0")
    parser.add_argument("--columns", type=int, help="frames per row (default: all in one row)")
    parser.add_argument("--scale", type=int, default=2, help="(2)")
    parser.add_argument("--out", required=True, help="the picture, .png")
    args = parser.parse_args(argv)
    check_at_least(args, {"--columns": 1, "--scale": 1})
    if min(args.frames) < 0:
        fail(f"--frames {min(args.frames)}: frames are numbered from 0")
    if not Path(args.video).is_file():
        fail(f"{args.video}: no such video file")
    return args


if __name__ == "__main__":
    args = parse_args()

from PIL import Image

import data
import predict


def main(args):
    frames, count = {}, 0  # only the frames asked for are kept
    try:
        for count, (_, rgb) in enumerate(predict.read_input(args.video)[0], 1):
            if count - 1 in args.frames:
                frames[count - 1] = rgb
    except data.DataError as e:
        fail(str(e))
    missing = [t for t in args.frames if t not in frames]
    if missing:
        fail(f"--frames {missing[0]}: {args.video} has {count} frames")
    columns = args.columns or len(args.frames)
    h, w = frames[args.frames[0]].shape[:2]
    gap = 4
    rows = -(-len(args.frames) // columns)
    picture = Image.new("RGB", (columns * (w + gap) - gap, rows * (h + gap) - gap), "white")
    for i, t in enumerate(args.frames):
        picture.paste(Image.fromarray(frames[t]), ((i % columns) * (w + gap), (i // columns) * (h + gap)))
    picture = picture.resize((picture.width * args.scale, picture.height * args.scale), Image.NEAREST)
    picture.save(args.out)
    print(f"wrote {args.out}: frames {' '.join(map(str, args.frames))} of {args.video}")


if __name__ == "__main__":
    main(args)
