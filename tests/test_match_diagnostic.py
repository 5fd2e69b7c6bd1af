"""experiments/match_diagnostic.py: owners, covers and pair counts against hand-computed cases and brute force."""
import importlib.util
import itertools
import json
from pathlib import Path

import pytest
import torch

import qshift
from tiny import build_model, tiny_config

_spec = importlib.util.spec_from_file_location(
    "match_diagnostic", Path(__file__).resolve().parent.parent / "experiments" / "match_diagnostic.py")
md = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(md)

VISIBLE, BEFORE, HIDDEN = md.CUES  # cue visible at t-1 and t, hidden at t-1, hidden at t


def test_pixel_owners_against_a_loop():
    torch.manual_seed(0)
    class_logits, mask_logits = torch.randn(2, 4, 3), torch.randn(2, 4, 3, 5)  # T=2, Q=4, L=2 (+ null), 3 x 5
    owner = md.pixel_owners(class_logits, mask_logits, (3, 5))  # same size: no resampling
    probs, masks = class_logits.softmax(-1)[..., :-1], mask_logits.sigmoid()
    for t, y, x in itertools.product(range(2), range(3), range(5)):
        scores = [sum(probs[t, q, c] * masks[t, q, y, x] for q in range(4)) for c in range(2)]
        c = max(range(2), key=lambda c: scores[c])
        assert owner[t, y, x] == max(range(4), key=lambda q: probs[t, q, c] * masks[t, q, y, x])
    assert owner.shape == (2, 3, 5) and md.pixel_owners(class_logits, mask_logits, (6, 10)).shape == (2, 6, 10)


def test_covered_objects_by_majority_and_size():
    N = 255  # synthetic.NO_OBJECT
    ids = torch.tensor([[[0, 0, 0, 1, 1, N], [0, 0, 1, 1, N, N]]], dtype=torch.uint8)  # one frame, 2 x 6
    owner = torch.tensor([[[0, 0, 0, 0, 1, 1], [0, 0, 2, 2, 1, 1]]])
    # query 0: five pixels of object 0, one of 1; query 1: mostly background; query 2: two of object 1; query 3: none
    assert md.covered_objects(owner, ids, 4, min_pixels=2).tolist() == [[0, -1, 1, -1]]
    assert md.covered_objects(owner, ids, 4, min_pixels=3).tolist() == [[0, -1, -1, -1]]


def test_object_states():
    N = 255
    ids = torch.tensor([[[0, 1, N]], [[0, N, N]]], dtype=torch.uint8)  # (T=2, 1, 3): object 1 leaves at t=1
    cue = torch.tensor([[[False, True, False]], [[True, False, False]]])
    present, hidden = md.object_states(ids, cue)
    assert present.shape == hidden.shape == (2, 256)
    assert present[:, :2].tolist() == [[True, True], [True, False]] and present.sum() == 3
    assert hidden[:, :2].tolist() == [[False, True], [True, False]] and hidden.sum() == 2


def test_adjacent_partners_of_match_queries():
    """Frame t's queries are frame t-1's, permuted: query i of t is query sigma[i] of t-1, so query j of t-1 pairs
    with query argsort(sigma)[j] of t."""
    torch.manual_seed(1)
    q0 = torch.randn(6, 16)
    sigma1, sigma2 = torch.randperm(6), torch.randperm(6)
    q1 = q0[sigma1] + 0.01 * torch.randn(6, 16)
    q2 = q1[sigma2] + 0.01 * torch.randn(6, 16)
    partners = md.adjacent_partners(qshift.match_queries(torch.stack([q0, q1, q2])[None])[0])
    assert partners.tolist() == [sigma1.argsort().tolist(), sigma2.argsort().tolist()]


def hand_made_video():
    """3 frames, 4 queries, objects 0, 1, 2. Object 1 is hidden at t=1, object 2 is gone after t=0."""
    cover = torch.tensor([[0, 1, 2, -1],
                          [1, 0, -1, 0],  # queries 1 and 3 both cover object 0
                          [1, -1, 0, -1]])
    present, hidden = torch.zeros(3, 256, dtype=torch.bool), torch.zeros(3, 256, dtype=torch.bool)
    present[0, :3] = present[1, :2] = present[2, :2] = True
    hidden[1, 1] = True
    return cover, present, hidden


def test_same_object_counts_by_hand():
    cover, present, hidden = hand_made_video()
    identity = torch.arange(4).expand(2, 4)
    # t=0 -> 1: q0 (object 0) -> q0 covers 1, miss, visible; q1 (object 1) -> q1 covers 0, miss, hidden at t;
    #           q2 (object 2) is gone at t=1 and q3 covers nothing: not counted.
    # t=1 -> 2: q0 (object 1) -> q0 covers 1, same, hidden at t-1; q1 and q3 (object 0) -> nothing, misses, visible.
    assert md.same_object_counts(identity, cover, present, hidden) == {VISIBLE: (0, 3), BEFORE: (1, 1), HIDDEN: (0, 1)}
    swap = torch.tensor([[1, 0, 2, 3], [0, 2, 1, 3]])  # t=0 -> 1: q0 <-> q1; t=1 -> 2: q1 -> q2
    assert md.same_object_counts(swap, cover, present, hidden) == {VISIBLE: (2, 3), BEFORE: (1, 1), HIDDEN: (1, 1)}
    # the oracle reaches the maximum: at t=2 only q2 covers object 0, so one of q1, q3 of t=1 must miss
    oracle = md.oracle_partners(cover)
    assert md.same_object_counts(oracle, cover, present, hidden) == {VISIBLE: (2, 3), BEFORE: (1, 1), HIDDEN: (1, 1)}
    assert all(sorted(row) == [0, 1, 2, 3] for row in oracle.tolist())  # a pairing: one partner each


def test_oracle_is_the_best_pairing_by_brute_force():
    torch.manual_seed(2)
    Q = 5
    for _ in range(20):
        cover = torch.randint(-1, 3, (2, Q))
        same = lambda partners: int((cover[1][partners] == cover[0])[cover[0] >= 0].sum())  # noqa: E731
        best = max(same(torch.tensor(p)) for p in itertools.permutations(range(Q)))
        assert same(md.oracle_partners(cover)[0]) == best


def test_owner_kept_counts_by_hand():
    N = 255
    ids = torch.tensor([[[0, 0, 1, N]], [[0, 1, 1, N]], [[0, 1, 1, 1]]], dtype=torch.uint8)  # (T=3, 1, 4)
    owner = torch.tensor([[[0, 0, 1, 2]], [[0, 1, 2, 2]], [[1, 1, 2, 0]]])
    cue = torch.tensor([[[0, 0, 0, 0]], [[0, 1, 1, 0]], [[0, 0, 0, 0]]], dtype=torch.bool)  # object 1 hidden at t=1
    # t=0 -> 1: pixel 0 (object 0) kept, visible; pixel 2 (object 1) 1 -> 2, hidden at t; pixel 1 changes object.
    # t=1 -> 2: pixel 0 0 -> 1, visible; pixels 1 and 2 (object 1) kept, hidden at t-1; pixel 3 was background.
    assert md.owner_kept_counts(owner, ids, cue) == {VISIBLE: (1, 2), BEFORE: (2, 2), HIDDEN: (0, 1)}


def test_script_on_a_tiny_model(tmp_path, capsys):
    checkpoint = tmp_path / "tiny"
    build_model(tiny_config(4), shift_div=8).save_pretrained(checkpoint)  # the synthetic 4 classes
    out = tmp_path / "report.json"
    md.main([str(checkpoint), "--max-videos", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["videos"] == 1 and report["runs"][0]["trained_with"]["shift_div"] == 8
    rates, counts = report["runs"][0]["rates"], report["runs"][0]["counts"]
    assert list(rates) == [*md.PAIRINGS, "owner kept (pixels)"]
    assert rates["identity"]["slot"] == 1 and counts["identity"]["slot"] == [23 * 20, 23 * 20]  # 24 frames, Q = 20
    assert counts["identity"]["object slot"][0] == counts["identity"]["object slot"][1]
    for name in md.PAIRINGS:  # every pairing is counted over the same pairs; none beats the oracle
        assert [counts[name][cue][1] for cue in md.CUES] == [counts["oracle"][cue][1] for cue in md.CUES]
        assert sum(counts[name][cue][0] for cue in md.CUES) <= sum(counts["oracle"][cue][0] for cue in md.CUES)
    assert "| oracle |" in capsys.readouterr().out
    for argv, message in (([str(checkpoint), "--out", str(out)], "must be a new .md or .json file"),
                          ([str(tmp_path)], "not a qshift checkpoint"),
                          ([str(checkpoint), "--min-pixels", "0"], "at least 1")):
        with pytest.raises(SystemExit) as exit_:
            md.main(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err
