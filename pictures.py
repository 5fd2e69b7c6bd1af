"""
Pictures of segmentations: class colours, legends, the paper's Figures 2-3 (a video's frames beside their ground truth
and prediction; evaluate.py) and the frames of predict.py's video (each frame beside its segmentation).
"""
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from data import IGNORE_INDEX
from qshift import MEAN, STD

VIS_WIDTH = 480  # wider frames are scaled down in pictures


def _voc_palette():
    """(256, 3) uint8: the PASCAL VOC colour map (bits of the id spread over R, G, B), 256 distinct colours."""
    ids = np.arange(256)
    palette = np.zeros((256, 3), np.uint8)
    for j in range(3):
        for c in range(3):  # bit 3j + c of the id -> bit 7 - j of channel c
            palette[:, c] |= (((ids >> (3 * j + c)) & 1) << (7 - j)).astype(np.uint8)
    return palette


VOC_PALETTE = _voc_palette()


def class_colours(palette=None):
    """(256, 3) uint8, the colour of each class id: palette's where given ((K, 3) colours of classes 0..K-1: a data
    set's own, e.g. synthetic's objects' colours or Cityscapes' official ones, or those a checkpoint keeps in its
    config), else the PASCAL VOC colour map by VSPW's raw id (class + 1); ignore is black."""
    colours = VOC_PALETTE[(np.arange(256) + 1) % 256]
    if palette is not None:
        colours[:len(palette)] = palette
    colours[IGNORE_INDEX] = 0
    return colours


def colorize(labels, colours):
    """Class map (H, W) -> uint8 RGB (H, W, 3) in colours (class_colours)."""
    return colours[np.asarray(labels, dtype=np.int64)]


def to_rgb(pixel_values):
    """Normalised pixel_values (3, H, W) -> uint8 RGB (H, W, 3)."""
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    rgb = (pixel_values.float().cpu() * std + mean).clamp(0, 1).mul(255).round().byte()
    return rgb.permute(1, 2, 0).numpy()


LEGEND_LINE, LEGEND_SWATCH = 16, 12  # pixels: a legend's line height, the side of a class's colour square


def legend_layout(classes, class_names, width, font):
    """Where a legend of classes goes in a picture `width` pixels wide: [(class, "id name", x, y)], the entries in the
    order given, wrapped into lines LEGEND_LINE apart (y from 0)."""
    entries, x, y = [], 4, 0
    for c in classes:
        text = f"{c} {class_names[c]}"
        size = LEGEND_SWATCH + 4 + font.getbbox(text)[2]
        if x + size > width and x > 4:
            x, y = 4, y + LEGEND_LINE
        entries.append((c, text, x, y))
        x += size + 12
    return entries


def draw_legend(draw, entries, colours, top, font):
    """Draw legend_layout's entries with ImageDraw draw, their first line at `top`: a square of each class's colour
    (class_colours), then its id and name."""
    for c, text, x, y in entries:
        draw.rectangle([x, top + y + 2, x + LEGEND_SWATCH - 1, top + y + LEGEND_SWATCH + 1],
                       fill=tuple(colours[c].tolist()))
        draw.text((x + LEGEND_SWATCH + 4, top + y), text, fill="black", font=font)


def draw_video(rows, class_names, colours):
    """A picture like the paper's Figures 2-3: one row per frame, columns image, ground truth (if any), prediction.

    rows: [(frame index, pixel_values (3, H, W), labels (H, W) or None, prediction (H, W))] (CPU); colours: see
    class_colours. Frame indices on the left, column titles above, a legend of the classes present below; frames
    wider than VIS_WIDTH are scaled down. Returns a PIL RGB image.
    """
    H, W = rows[0][1].shape[-2:]
    scale = min(1.0, VIS_WIDTH / W)
    h, w = round(H * scale), round(W * scale)
    titles = ["image"] + (["ground truth"] if rows[0][2] is not None else []) + ["prediction"]
    cells = [[Image.fromarray(to_rgb(x)).resize((w, h), Image.BILINEAR)]
             + [Image.fromarray(colorize(m, colours)).resize((w, h), Image.NEAREST) for m in (y, p) if m is not None]
             for _, x, y, p in rows]
    present = sorted({int(c) for _, _, y, p in rows for m in (y, p) if m is not None for c in m.unique()}
                     - {IGNORE_INDEX})
    font, line, gap = ImageFont.load_default(), LEGEND_LINE, 2  # gap: white between cells
    left = 8 + max(font.getbbox(text)[2] for text in ["frame"] + [str(t) for t, *_ in rows])  # the frame numbers
    width = left + len(titles) * (w + gap) - gap
    entries = legend_layout(present, class_names, width, font)
    top, bottom = line, line + len(rows) * (h + gap)  # the grid's rows
    picture = Image.new("RGB", (width, bottom + (entries[-1][3] + line + 4 if entries else 0)), "white")
    draw = ImageDraw.Draw(picture)
    for col, title in enumerate(["frame"] + titles):
        draw.text((2 if col == 0 else left + (col - 1) * (w + gap) + 2, 2), title, fill="black", font=font)
    for r, row in enumerate(cells):
        draw.text((2, top + r * (h + gap) + 2), str(rows[r][0]), fill="black", font=font)
        for col, cell in enumerate(row):
            picture.paste(cell, (left + col * (w + gap), top + r * (h + gap)))
    draw_legend(draw, entries, colours, bottom, font)
    return picture


def save_picture(rows, class_names, colours, path):
    """draw_video's picture as a PNG at path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_video(rows, class_names, colours).save(path)


def raw_palette(dataset, colours, num_classes):
    """(256, 3) uint8: colours (class_colours) by the data set's raw label ids, for palette PNGs of to_raw maps."""
    palette = np.zeros((256, 3), np.uint8)
    classes = np.arange(num_classes)
    palette[dataset.raw_lut[classes]] = colours[classes]
    return palette


def save_prediction(raw, path, palette):
    """One class map in the data set's raw ids, uint8 (H, W) (dataset.to_raw), as a palette PNG at path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(raw)
    image.putpalette(palette.tobytes())
    image.save(path)


LEGEND_LINES = 2  # the video's legend: as many of the classes in view as fit in two lines, those of most pixels


class Overlay:
    """The frames of the output video: overlay(rgb, pred) -> uint8 (H', W', 3), the frame rgb (h, w, 3) beside
    itself blended with the colours (class_colours) of its map pred (h, w), over a legend of the classes
    in view: those of most pixels that fit in LEGEND_LINES lines, in the order of their ids, so that it keeps still
    from frame to frame; even sides (the video's 4:2:0 colour needs them). Each legend is drawn once and kept: text
    is what costs, and the classes in view seldom change."""

    def __init__(self, class_names, colours):
        self.class_names, self.colours, self.font, self.legends = class_names, colours, ImageFont.load_default(), {}

    def legend(self, in_view, width):
        """The legend of the classes in_view (a tuple, most pixels first) as uint8 (LEGEND_LINES * LEGEND_LINE + 4,
        width, 3)."""
        if (in_view, width) not in self.legends:
            def fitting(classes):
                return [e for e in legend_layout(classes, self.class_names, width, self.font)
                        if e[3] < LEGEND_LINES * LEGEND_LINE]
            entries = fitting(sorted(c for c, *_ in fitting(in_view)))
            strip = Image.new("RGB", (width, LEGEND_LINES * LEGEND_LINE + 4), "white")
            draw_legend(ImageDraw.Draw(strip), entries, self.colours, 2, self.font)
            self.legends[in_view, width] = np.asarray(strip)
        return self.legends[in_view, width]

    def __call__(self, rgb, pred):
        h, w = pred.shape
        blend = (rgb.astype(np.uint16) + colorize(pred, self.colours)) // 2  # half frame, half classes
        counts = np.bincount(pred.ravel(), minlength=len(self.class_names))
        in_view = tuple(int(c) for c in np.argsort(-counts, kind="stable") if counts[c])
        white = np.full((h, 2, 3), 255, np.uint8)
        picture = np.concatenate([np.concatenate([rgb, white, blend.astype(np.uint8)], 1),
                                  self.legend(in_view, 2 * w + 2)])
        return np.pad(picture, ((0, picture.shape[0] % 2), (0, 0), (0, 0)), constant_values=255)
