"""Does Eq. 2 pair the same segment? Measured on the synthetic validation world, which knows every pixel's object.

The paper shifts channels between the queries of adjacent frames that Eq. 2 matches (Hungarian on the cosine
similarity of the decoded queries), assuming that matched queries stand for the same segment. The synthetic items
carry object_ids (data.py), so the assumption can be checked instead of guessed at.

Protocol. Each checkpoint is loaded as the plain image model (shift_div=0) and run on the CPU, without gradients, on
each whole 24-frame video of the synthetic validation world (32 videos, seed 0: the world train.py validates on), the
frames of a video in one batch. Everything is measured on the decoded queries (T, Q, C) and on the classes and masks
the heads make of them: what the matching sees (for a shift-trained checkpoint, its queries before the shift).
- Owner of a pixel: the query with the largest contribution p_q(c) m_q to the pixel's class c, where MaskFormer's
  semantic inference picks c = argmax_l sum_q p_q(l) m_q, p_q = the class probabilities without the null class and
  m_q = sigmoid(mask logits) upsampled bilinearly to the frame (as qshift.semantic_segmentation does).
- A query covers object o at frame t when o is the most frequent id (background included) among the pixels it owns,
  and it owns at least MIN_PIXELS pixels of o. Otherwise it covers nothing.
- A pairing gives each query j of frame t-1 a partner query of frame t:
    Eq. 2     qshift.match_queries on the decoded queries (the paper);
    identity  query j of t-1 with query j of t;
    masks     qshift.match_queries on the flattened sigmoid mask maps (Hungarian on the cosine similarity of the
              predicted masks; the remedy the lead builds as match_by="masks");
    oracle    Hungarian on the indicator "covers the same object": the most same-object pairs any pairing reaches.
- Same object: among the queries of t-1 that cover an object o still present at t, the share whose partner covers o
  at t. Split by o's colour cue: visible at t-1 and t, hidden (grey) at t-1, hidden at t (never at both: data.py).
- Same slot: the share of queries whose partner has their own index (1 for identity), among the queries of t-1
  that cover an object, and among all queries.
- Owner kept (pixels, no pairing): among the pixels that show the same object at t-1 and t, the share whose owner is
  the same query at both frames; split by the cue in the same way.
Rates pool every adjacent frame pair of every video; the summary is mean ± sample std over the checkpoints (seeds).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python experiments/match_diagnostic.py \\
        runs/t1440/seed{0,1,2}/base/last --out experiments/match_diagnostic/base.md
"""
import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from scipy.optimize import linear_sum_assignment

sys.path[:0] = [str(Path(__file__).resolve().parents[i]) for i in (1, 0)]  # run from anywhere: the repository's
# modules, and tables.py beside this script
import data
import qshift
import synthetic
from cli import check_checkpoint, fail, first_line
from metrics import json_safe
from tables import mean_std

MIN_PIXELS = 8  # a query must own this many pixels of an object to cover it (the objects have ~200-800 pixels)
PAIRINGS = ("Eq. 2 (queries)", "identity", "masks", "oracle")
CUES = ("visible at t-1 and t", "hidden at t-1", "hidden at t")  # the object's colour cue; never hidden twice in a row


def pixel_owners(class_logits, mask_logits, size):
    """The query that contributes most to each pixel's winning class.

    class_logits (T, Q, L+1), mask_logits (T, Q, h, w) -> owner (T, H, W) int64 in 0..Q-1 for size (H, W).
    """
    probs = class_logits.softmax(-1)[..., :-1]  # (T, Q, L) without the null class
    masks = F.interpolate(mask_logits.sigmoid(), size=size, mode="bilinear", align_corners=False)  # (T, Q, H, W)
    winner = torch.einsum("tql,tqhw->tlhw", probs, masks).argmax(1)  # (T, H, W): semantic_segmentation's classes
    p_winner = probs.gather(2, winner.flatten(1)[:, None].expand(-1, probs.shape[1], -1))  # (T, Q, H*W)
    return (p_winner.view_as(masks) * masks).argmax(1)


def covered_objects(owner, object_ids, num_queries, min_pixels=MIN_PIXELS):
    """The object each query covers: cover (T, Q) int64, -1 for none.

    owner (T, H, W) in 0..Q-1, object_ids (T, H, W) in 0..254 and synthetic.NO_OBJECT. Query q covers o at t when o is
    the most frequent id among the pixels q owns at t and q owns at least min_pixels of them.
    """
    T = owner.shape[0]
    frame = torch.arange(T)[:, None, None]
    index = ((frame * num_queries + owner) * 256 + object_ids.long()).flatten()
    counts = torch.bincount(index, minlength=T * num_queries * 256).view(T, num_queries, 256)  # pixels per (t, q, id)
    pixels, majority = counts.max(-1)  # ties: the lower id
    covers = (majority != synthetic.NO_OBJECT) & (pixels >= min_pixels)
    return torch.where(covers, majority, -1)


def object_states(object_ids, cue_hidden):
    """present, hidden: (T, 256) bool, object id o shows at frame t, and its cue is hidden (grey) there.

    object_ids (T, H, W), cue_hidden (T, H, W) bool. An object is grey all over or not at all.
    """
    T = object_ids.shape[0]
    index = torch.arange(T)[:, None, None] * 256 + object_ids.long()  # (T, H, W)
    count = lambda where: torch.bincount(index[where], minlength=T * 256).view(T, 256) > 0  # noqa: E731
    return count(object_ids != synthetic.NO_OBJECT), count(cue_hidden)


def adjacent_partners(perm):
    """perm (T, Q) of match_queries (every frame in frame 0's order) -> partners (T-1, Q): partners[t-1, j] is the
    query of frame t matched to query j of frame t-1."""
    partners = torch.empty_like(perm[1:])
    return partners.scatter_(1, perm[:-1], perm[1:])  # perm[t-1, i] and perm[t, i] are matched


def oracle_partners(cover):
    """The pairing with the most same-object pairs: Hungarian on 'covers the same object'. cover (T, Q) -> (T-1, Q)."""
    partners = torch.empty(cover.shape[0] - 1, cover.shape[1], dtype=torch.long)
    for t in range(1, cover.shape[0]):
        same = (cover[t - 1, :, None] == cover[t, None, :]) & (cover[t - 1, :, None] >= 0)  # (Q, Q): [j of t-1, i of t]
        rows, cols = linear_sum_assignment(same.numpy(), maximize=True)
        partners[t - 1, rows] = torch.from_numpy(cols)
    return partners


def pairings(queries, mask_logits, cover):
    """The four pairings of adjacent frames, each partners (T-1, Q). queries (T, Q, C), mask_logits (T, Q, h, w)."""
    T, Q = cover.shape
    masks = mask_logits.sigmoid().flatten(2)[None]  # (1, T, Q, h*w): match_queries takes any (B, T, Q, D) features
    return dict(zip(PAIRINGS, (adjacent_partners(qshift.match_queries(queries[None])[0]),
                               torch.arange(Q).expand(T - 1, Q),
                               adjacent_partners(qshift.match_queries(masks)[0]),
                               oracle_partners(cover))))


def split_by_cue(hits, counted, hidden_before, hidden_now):
    """{cue case: (hits, counted)} of boolean maps of one shape, by the cue at t-1 (hidden_before) and t."""
    cases = (~hidden_before & ~hidden_now, hidden_before & ~hidden_now, hidden_now)
    return {cue: (int((hits & case).sum()), int((counted & case).sum())) for cue, case in zip(CUES, cases)}


def same_object_counts(partners, cover, present, hidden):
    """Pairs that keep their object: {cue case: (same, counted)}.

    Counted: the queries j of t-1 that cover an object o present at t; same: partners[t-1, j] covers o at t;
    cue case: o's cue at t-1 and t. partners (T-1, Q), cover (T, Q), present and hidden (T, 256) bool.
    """
    o = cover[:-1]  # (T-1, Q): the object query j covers at t-1
    o_ = o.clamp(min=0)  # an index for the gathers; o = -1 is not counted anyway
    counted = (o >= 0) & present[1:].gather(1, o_)
    same = counted & (cover[1:].gather(1, partners) == o)
    return split_by_cue(same, counted, hidden[:-1].gather(1, o_), hidden[1:].gather(1, o_))


def owner_kept_counts(owner, object_ids, cue_hidden):
    """Pixels that keep their owner query: {cue case: (kept, counted)} over the pixels that show the same object at
    t-1 and t. owner, object_ids (T, H, W), cue_hidden (T, H, W) bool."""
    counted = (object_ids[1:] == object_ids[:-1]) & (object_ids[1:] != synthetic.NO_OBJECT)
    kept = counted & (owner[1:] == owner[:-1])
    return split_by_cue(kept, counted, cue_hidden[:-1], cue_hidden[1:])


@torch.no_grad()
def diagnose(model, dataset, min_pixels=MIN_PIXELS, max_videos=None):
    """Counts over every adjacent frame pair of the (first max_videos) videos, each an int64 array (hits, counted):
    {pairing: {cue case: same object, "object slot" and "slot": same slot}, "owner kept (pixels)": {cue case: kept}}."""
    model.eval()
    counts = collections.defaultdict(lambda: collections.defaultdict(lambda: np.zeros(2, np.int64)))
    for v in range(min(len(dataset), max_videos or len(dataset))):
        item = dataset[v]
        out = model(item["pixel_values"][None])  # one whole video: (1, T, 3, H, W), its T frames in one batch
        queries, mask_logits = out.transformer_decoder_last_hidden_state, out.masks_queries_logits  # (T, Q, ...)
        ids, cue = item["object_ids"], item["cue_hidden"]
        owner = pixel_owners(out.class_queries_logits, mask_logits, ids.shape[-2:])
        cover = covered_objects(owner, ids, queries.shape[1], min_pixels)
        present, hidden = object_states(ids, cue)
        for name, partners in pairings(queries, mask_logits, cover).items():
            for key, pair in same_object_counts(partners, cover, present, hidden).items():
                counts[name][key] += pair
            own = partners == torch.arange(partners.shape[1])  # (T-1, Q)
            covering = cover[:-1] >= 0
            counts[name]["object slot"] += (int((own & covering).sum()), int(covering.sum()))
            counts[name]["slot"] += (int(own.sum()), own.numel())
        for key, pair in owner_kept_counts(owner, ids, cue).items():
            counts["owner kept (pixels)"][key] += pair
    return counts


def rates(counts):
    """{row: {cue case, "all", "object slot", "slot": rate}} from diagnose's counts (NaN where nothing was counted)."""
    result = {}
    for row, cells in counts.items():
        cells = {**cells, "all": sum(cells[cue] for cue in CUES)}
        result[row] = {key: float(hit / total) if total else float("nan") for key, (hit, total) in cells.items()}
    return result


COLUMNS = (*CUES, "all", "object slot", "slot")


def markdown_table(runs):
    """Rows: the pairings and the pixel owners; columns: percent, mean ± std over runs (a list of rates dicts)."""
    titles = [f"cue {cue}" for cue in CUES] + ["all", "same slot, object queries", "same slot, all queries"]
    lines = ["| pairing of t-1 with t | " + " | ".join(titles) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for row in runs[0]:
        cells = [mean_std([run[row].get(key, float("nan")) for run in runs])[0] for key in COLUMNS]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.error = fail  # one line, exit status 2, like every other bad input
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="folders written by train.py (RUN/last)")
    parser.add_argument("--min-pixels", type=int, default=MIN_PIXELS, help="pixels a query must own of an object "
                        "to cover it")
    parser.add_argument("--max-videos", type=int, help="the first N validation videos only (a quick look)")
    parser.add_argument("--out", help="also write the report to FILE.md or FILE.json (never over an existing file)")
    args = parser.parse_args(argv)
    if args.min_pixels < 1 or (args.max_videos is not None and args.max_videos < 1):
        fail("--min-pixels and --max-videos must be at least 1")
    if args.out and (Path(args.out).suffix not in (".md", ".json") or Path(args.out).exists()
                     or not Path(args.out).parent.is_dir()):
        fail(f"--out {args.out}: must be a new .md or .json file in an existing folder")
    for checkpoint in args.checkpoints:
        check_checkpoint("checkpoint", checkpoint)
    transformers.logging.set_verbosity_error()
    dataset = data.build_dataset("synthetic", split="val", clip_len=None, train=False)  # seed 0, as train.py
    num_videos = min(len(dataset), args.max_videos or len(dataset))

    runs, sections = [], []
    for checkpoint in args.checkpoints:
        try:
            model = qshift.QShiftSegmenter.from_pretrained(checkpoint, shift_div=0)  # the plain image model
        except Exception as e:  # a broken checkpoint fails in many ways: json, safetensors, config, shapes
            fail(f"{checkpoint}: cannot load ({first_line(e)})")
        num_labels = model.model.config.num_labels
        if num_labels != dataset.num_classes:
            fail(f"{checkpoint}: {num_labels} classes; the synthetic world has {dataset.num_classes}")
        trained = getattr(model.model.config, "qshift", None) or {}  # the settings saved with it; {}: an image model
        counts = diagnose(model, dataset, args.min_pixels, num_videos)
        runs.append({"checkpoint": checkpoint, "trained_with": trained, "rates": rates(counts),
                     "counts": {row: {k: v.tolist() for k, v in cells.items()} for row, cells in counts.items()}})
        pairs = counts[PAIRINGS[0]]
        sizes = ", ".join(f"cue {cue}: {pairs[cue][1]}" for cue in CUES) + \
            f"; same slot: {pairs['object slot'][1]} object queries, {pairs['slot'][1]} in all"
        sections.append(f"### {checkpoint} (trained with shift_div {trained.get('shift_div', 0)})\n\n"
                        + markdown_table([runs[-1]["rates"]]) + f"\nEvery pairing counts the same pairs ({sizes}).\n")
        print(sections[-1], flush=True)
    summary = (f"## Mean ± std over {len(runs)} checkpoints\n\n" + markdown_table([run["rates"] for run in runs])
               + f"\nPercent. Synthetic val, {num_videos} whole videos, min_pixels {args.min_pixels}; "
               f"checkpoints: {', '.join(args.checkpoints)}.\n")
    print(summary, end="")
    if args.out:
        report = {"min_pixels": args.min_pixels, "videos": num_videos, "runs": [json_safe(run) for run in runs]}
        text = json.dumps(report, indent=2) + "\n" if args.out.endswith(".json") else \
            "\n".join(["# Does Eq. 2 pair the same segment?", "", summary, *sections])
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
