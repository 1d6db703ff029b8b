"""The documentation: README.md and docs/*.md.

- Every generated block equals what ``tools.project.docs`` renders from the files now (a stale
  figure fails), and the generator itself is checked on small fabricated files.
- No measured-looking figure is typed by hand outside the generated blocks and code fences.
- Every test the docs name (the bad-input catalogue above all) exists.
- The front page stays short, its contents list resolves, and every relative link resolves.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.params import flatten
from pipeline.stages.common import timing_path
from tools.experiments.data import Report, RowResult, Stat, write_report
from tools.experiments.tables import claims
from tools.project import docs
from tools.project.docs import BLOCKS, blocks, fill, main
from tools.project.docs import render as render_wrapped
from tools.project.docs.common import WIDTH, DocsError, wrap
from tools.project.docs.params_reference import field_comments, yaml_comments

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = docs.documents(ROOT)
# block -> the page that must carry it
REQUIRED = {"headline": "README.md", "claims": "README.md", "standing": "README.md",
            "results": "docs/results.md", "params": "docs/params.md", "bench": "docs/benchmarks.md",
            "report": "docs/experiments.md", "datasets": "docs/datasets.md",
            "figure": "README.md", "timings": "README.md"}


def render(name: str, root: Path) -> str:
    """A block as tools.project.docs writes it, its wrapped prose joined again (what the tests
    read)."""
    return re.sub(r"(?<=[^|\n])\n(?=[^|\n-])", " ", render_wrapped(name, root).replace("\n  ", " "))


def test_wrap_keeps_tables_and_wraps_prose_and_list_items():
    prose = " ".join(["word"] * 30)
    table = "| " + " | ".join(["cell"] * 30) + " |"
    text = wrap(f"{prose}\n\n{table}\n| --- |\n\n- {prose}\n- short\n\n![a picture]({'x' * 120})")
    paragraph, kept, items, picture = text.split("\n\n")
    assert paragraph.split("\n") == [" ".join(["word"] * 20), " ".join(["word"] * 10)]
    assert kept == f"{table}\n| --- |" and picture.endswith("x)")
    assert items.split("\n") == ["- " + " ".join(["word"] * 19), "  " + " ".join(["word"] * 11),
                                  "- short"]
    assert all(len(line) <= WIDTH for line in paragraph.split("\n") + items.split("\n"))
    assert wrap("a `long-path/with-hyphens/" + "x" * 120 + "` b").count("\n") == 2  # never split
    # a paragraph straight above its list keeps the list apart
    assert wrap("Steps:\n- one\n- two") == "Steps:\n- one\n- two"


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --- (a) the generated blocks are up to date ------------------------------------------------------


def changed_since_commit(*paths: str) -> bool:
    """Whether git sees ``paths`` changed in the workspace since the last commit (False outside
    a git checkout)."""
    try:
        result = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=ROOT,
                                capture_output=True, text=True, check=False)
    except OSError:
        return False
    return result.returncode == 0 and bool(result.stdout.strip())


@pytest.mark.parametrize("path", DOCUMENTS, ids=rel)
def test_every_generated_block_is_what_the_generator_renders_now(path):
    _, stale = fill(path.read_text(), ROOT, rel(path))
    if stale and changed_since_commit("metrics", "params.yaml") \
            and not changed_since_commit("README.md", "docs"):
        # a run or an experiment in this workspace since the last commit: the committed pages
        # match the committed results (a clean checkout, as CI's, checks that strictly)
        pytest.skip("the results changed since the last commit and the pages were not "
                    "regenerated: `make docs` brings them up to date")
    assert not stale, (f"{rel(path)}: generated block(s) {stale} differ from their sources; "
                       "run `make docs`")


def test_the_required_blocks_are_where_readers_look():
    found = {name: rel(path) for path in DOCUMENTS
             for name, _, _ in blocks(path.read_text(), rel(path))}
    assert {name: found.get(name) for name in REQUIRED} == REQUIRED


def write(root: Path, relative: str, content: str | dict) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def protocol(rank1: float, mAP: float, valid: int = 8) -> dict:
    return {"rank1": rank1, "rank5": 0.75, "rank10": 0.875, "rank20": 1.0, "mAP": mAP,
            "num_valid_queries": valid, "num_queries": 8}


@pytest.fixture
def fake(tmp_path):
    """A repository root with small hand-made params and results."""
    write(tmp_path, "params.yaml", "data:\n  video: [synthetic]\n  splits: [0]\n")
    write(tmp_path, "metrics/results/synthetic.json",
          {"R1": {"base": 12.5, "ind": 50.0}, "mAP": {"base": 10.0, "ind": 40.25}})
    write(tmp_path, "metrics/eval/synthetic-0.json", {
        "dataset": "synthetic", "split": 0, "seed": 7,
        "models": {"baseline": {"official": protocol(0.125, 0.1),
                                "torchreid": protocol(0.25, 0.2, valid=6)},
                   "joint": {"official": protocol(0.5, 0.4025),
                             "torchreid": protocol(0.625, 0.5, valid=6)}},
        "attention": {"joint": {"overlap": 0.00012, "entropy": 0.5}}})
    return tmp_path


def test_headline_and_results_blocks_from_the_headline_and_the_detail(fake):
    out = render("headline", fake)
    assert "Detail of split" not in out
    assert "| synthetic | 0 | 12.5 | 50.0 | 10.0 | 40.2 |" in out  # 40.25 rounds half to even
    assert "| R1.base | R1.ind | mAP.base | mAP.ind |" in out
    out = render("results", fake)
    assert "split 0, seed 7" in out and "R1.base" not in out
    assert "official: 8 of 8 queries valid; torchreid: 6 of 8 queries valid" in out
    assert ("| `baseline` (base) | Baseline | 12.5 | 75.0 | 87.5 | 100.0 | 10.0 | 25.0 | 20.0 "
            "| n/a | n/a |") in out
    assert "| `joint` (ind) | SpaAtn+Q+TemAtn+Ind | 50.0 |" in out and "| 0.00012 | 0.5 |" in out
    assert "interval" not in out and "Where the heads look" not in out  # older files: none


def test_results_block_prints_the_intervals_and_the_ground_truth(fake):
    """Results with intervals (headline ci, per-model bounds) and ground-truth measures: the
    headline gains ci.R1 and ci.mAP, the detail's scores their intervals, and a table says where
    each attention model's heads look."""
    write(fake, "metrics/results/synthetic.json",
          {"R1": {"base": 12.5, "ind": 50.0}, "mAP": {"base": 10.0, "ind": 40.25},
           "ci": {"R1": 7.5, "mAP": 6.0}})
    evaluation = json.loads((fake / "metrics/eval/synthetic-0.json").read_text())
    for per_protocol in evaluation["models"].values():
        for m in per_protocol.values():
            m.update(rank1_lo=m["rank1"] - 0.05, rank1_hi=m["rank1"] + 0.1,
                     mAP_lo=m["mAP"] - 0.05, mAP_hi=m["mAP"] + 0.05)
    evaluation["attention"]["joint"].update(
        person=0.8, person_uniform=0.25, occluder=0.05, background=0.15, parts_covered=2,
        visibility_corr=0.25,
        visibility_corr_lo=0.125, visibility_corr_hi=0.375, head1_part="torso",
        head2_part="legs")
    write(fake, "metrics/eval/synthetic-0.json", evaluation)
    out = render("headline", fake)
    assert "| R1.base | R1.ind | mAP.base | mAP.ind | ci.R1 | ci.mAP |" in out
    assert "| synthetic | 0 | 12.5 | 50.0 | 10.0 | 40.2 | 7.5 | 6.0 |" in out
    assert "a difference smaller than it is within the noise of the test set" in out
    out = render("results", fake)
    assert ("| `baseline` (base) | Baseline | 12.5 [7.5, 22.5] | 75.0 | 87.5 | 100.0 "
            "| 10.0 [5.0, 15.0] | 25.0 [20.0, 35.0] | 20.0 [15.0, 25.0] | n/a | n/a |") in out
    assert ("| `joint` (ind) | 0.8 | 0.25 | 0.05 | 0.15 | 2 | torso, legs | +0.25 [+0.12, +0.38] |"
            in out)


@pytest.mark.parametrize(("name", "missing", "command"), [
    ("headline", "metrics/results/synthetic.json", "make repro"),
    ("results", "metrics/eval/synthetic-0.json", "make repro"),
    ("datasets", "metrics/datasets.json", "make repro"),
    ("bench", "metrics/bench.json", "make bench"),
    ("bench-notes", "metrics/bench.json", "make bench"),
    ("report", "metrics/report.json", "make report"),
    ("claims", "metrics/report.json", "make report"),
])
def test_a_missing_source_renders_a_line_naming_it_and_its_command(fake, name, missing, command):
    (fake / missing).unlink(missing_ok=True)
    out = render(name, fake)
    assert out.startswith("*Not yet produced: ") and out.count("\n") == 1
    assert f"`{missing}` does not exist" in out and command in out


def test_an_unreadable_source_is_an_error_naming_it(fake):
    write(fake, "metrics/results/synthetic.json", "{not json")
    with pytest.raises(DocsError, match=r"metrics/results/synthetic\.json: not readable JSON"):
        render("headline", fake)
    write(fake, "metrics/results/synthetic.json", {"mAP": {}})
    with pytest.raises(DocsError, match=r"metrics/results/synthetic\.json: expected the key R1"):
        render("headline", fake)


BENCH = {"quick": False, "total_s": 90.0,
         "machine": {"processor": "Test CPU", "cpus_usable": 2, "gpu": None, "torch": "x"},
         "setup": {"device": "cpu", "backbone": "resnet18", "input": [128, 64]},
         "benchmarks": {
             "cache_throughput": {
                 "numerator": "cache_frames_per_s", "denominator": "backbone_frames_per_s",
                 "figures": {"cache_frames_per_s": 80.0, "backbone_frames_per_s": 100.0},
                 "ratio": 0.8, "target": ">= 0.85", "met": False,
                 "backbone_runs_frames_per_s": [90.0, 100.0], "num_workers": 2},
             "attention_cached_epoch": {
                 "numerator": "uncached_epoch_s", "denominator": "cached_epoch_s",
                 "figures": {"uncached_epoch_s": 9.0, "cached_epoch_s": 3.0},
                 "ratio": 3.0, "target": None, "met": None},
             "cache_throughput_paper": {"skipped": True, "reason": "--quick or --no-paper"}}}


def test_bench_block_and_notes_from_bench_json(tmp_path):
    write(tmp_path, "metrics/bench.json", BENCH)
    out = render("bench", tmp_path)
    assert "Test CPU, 2 usable cores" in out and "1.5 min in all" in out
    assert ("| `cache_throughput` | cache 80.0 frames/s | backbone 100.0 frames/s | 0.8 | >= 0.85 "
            "| **no** |") in out
    assert ("| `attention_cached_epoch` | uncached epoch 9.00 s | cached epoch 3.00 s | 3 "
            "| reported") in out
    assert "| `cache_throughput_paper` | skipped (--quick or --no-paper) |" in out
    notes = render("bench-notes", tmp_path)
    assert "from 90.0 to 100.0 frames/s" in notes and "it would be 0.89" in notes
    assert "3.0 times as fast" in notes


def report_row(label: str, model: str, rank1, mean_ap, ci: float | None = 0.02, person=None):
    """A Table 1 row as tools.experiments.report makes it (fractions); ``person``: with ground
    truth."""
    truth = {} if person is None else {
        "person": Stat(person, 0.0, 1), "parts": Stat(3.0, 0.0, 1),
        "heads_below": Stat(2.0, 0.0, 1), "visibility": Stat(0.1, 0.0, 1),
        "visibility_ci": (0.05, 0.15)}
    def value(v):
        return (v if isinstance(v, str) else Stat(v, 0.01, 2))
    def bounds(v):
        return (None if ci is None or isinstance(v, str) else (v - ci, v + ci))
    return RowResult(label, model, value(rank1), value(mean_ap),
                     Stat(0.001, 0.0, 2) if model != "baseline" else "n/a",
                     Stat(0.024, 0.006, 2) if model != "baseline" else "n/a", 64.0, 2, 2,
                     ("baseline commit", "t1-s1"), bounds(rank1), bounds(mean_ap), **truth)


def write_report_json(root, official, torchreid, problems=None):
    """metrics/report.json as tools.experiments.report writes it (claims made from Table 1)."""
    tables = {("synthetic", "official"): official, ("synthetic", "torchreid"): torchreid}
    report = Report("0123456789abcdef", "main", (0, 1), 0, 6, ("synthetic",), tables,
                    {key: [] for key in tables}, problems or {},
                    claims={key: claims(rows) for key, rows in tables.items()}, command="cmd")
    (root / "metrics").mkdir(parents=True, exist_ok=True)
    write_report(root / "metrics" / "report.json", report)


def test_report_block_keeps_the_official_tables_and_the_steps(tmp_path):
    write_report_json(tmp_path, [report_row("Baseline", "baseline", 0.30, 0.28),
                                 report_row("SpaAtn+Q+TemAtn+Ind", "joint", 0.405, "missing")],
                      [report_row("Baseline", "baseline", 0.777, 0.666)],
                      {"t1-s1-joint": "no results"})
    out = render("report", tmp_path)
    assert "baseline commit `0123456`; Table 1 over seeds 0, 1" in out
    assert "| Baseline | 30.0 ± 1.0 [28.0, 32.0] | 28.0 ± 1.0 [26.0, 30.0] | n/a | n/a |" in out
    assert "| SpaAtn+Q+TemAtn+Ind | 40.5 ± 1.0 [38.5, 42.5] | missing | 0.001 ± 0.000 |" in out
    assert "77.7" not in out and "paper rank-1" not in out and "experiments |" not in out
    assert "the full model over the Baseline" not in out  # mAP missing: no step
    assert "Some cells are missing" in out


def test_report_steps_are_differences_of_the_unrounded_means(tmp_path):
    write_report_json(tmp_path, [report_row("Baseline", "baseline", 0.30, 0.28),
                                 report_row("SpaAtn+Q+TemAtn+Ind", "joint", 0.40549, 0.30049)],
                      [report_row("Baseline", "baseline", 0.777, 0.666)])
    out = render("report", tmp_path)
    assert ("- the full model over the Baseline (SpaAtn+Q+TemAtn+Ind against Baseline): "
            "+10.5 rank-1, +2.0 mAP") in out
    assert "Some cells are missing" not in out


@pytest.mark.parametrize(("text", "says"), [
    ("# a report\n", "not JSON"), ('{"format": 0}', "not a report of format 1"),
    ('{"format": 1, "sections": []}', "a report without 'commit'")])
def test_an_unreadable_report_is_an_error_naming_it(tmp_path, text, says):
    write(tmp_path, "metrics/report.json", text)
    with pytest.raises(DocsError, match=rf"^metrics/report\.json: {says}"):
        render("report", tmp_path)


def test_datasets_block_from_the_index_statistics(tmp_path):
    write(tmp_path, "metrics/datasets.json", {
        "video": {"synthetic": {"split_0": {
            "train": {"ids": 4, "tracklets": 8, "frames": 80, "cameras": 2},
            "test": {"ids": 4, "tracklets": 10, "frames": 90, "cameras": 2, "queries": 4,
                     "junk_tracklets": 1, "distractor_tracklets": 1},
            "frames_per_tracklet": {"min": 3, "mean": 9.44, "max": 20},
            "skipped": {"frames": 2, "tracklets": 0}}}},
        "image": {"synthetic": {"ids": 6, "images": 12, "cameras": 2, "skipped": 0}}})
    out = render("datasets", tmp_path)
    assert "| synthetic | 0 | 4 / 8 / 80 | 4 / 10 / 90 | 4 | 1 | 1 | 3 / 9.4 / 20 | 2 |" in out
    assert "| synthetic | 6 | 12 | 2 | 0 |" in out


def test_params_block_reads_the_comments_from_the_source_and_the_yaml_values(tmp_path):
    from pipeline.params import ModelParams

    write(tmp_path, "params.yaml", "data:\n  height: 128  # (default run) was 256\n"
                                   "model:\n  K: 6  # the default: no value shown\n")
    out = render("params", tmp_path)
    comment = field_comments(ModelParams)["K"]
    assert f"| `model.K` | `int` | `6` | >= 1 |  | {comment} |" in out
    assert "| `data.height` | `int` | `256` | >= 16 | `128` (was 256) |" in out
    assert "`loss.oim_momentum` | `float` | `0.5` | >= 0, < 1 |" in out
    assert "| `pretrain.weight_decay` | `float` | `5.0e-4` |" in out
    assert "### `attention.temporal`\n\nPhase 2, CNN fixed" in out
    assert "How dvc.yaml starts the stages that run models" in out  # a comment above its field


def test_params_yaml_marks_exactly_the_keys_that_differ_from_the_paper():
    from pipeline.params import Params, load_params, to_dict

    defaults = flatten(to_dict(Params()))
    mine = flatten(to_dict(load_params(ROOT / "params.yaml")))
    marked = {k for k, c in yaml_comments((ROOT / "params.yaml").read_text()).items()
              if "(default run)" in c}
    assert marked == {k for k in defaults if mine[k] != defaults[k]}


def test_yaml_comments_follow_the_nesting():
    text = "a:\n  b: 1  # one\n  c:\n    d: 2  # (default run) two\n  e: 3\nf: 4 # four\n"
    assert yaml_comments(text) == {"a": "", "a.b": "one", "a.c": "", "a.c.d":
                                        "(default run) two", "a.e": "", "f": "four"}


# --- writing and checking the documents -----------------------------------------------------------


def test_check_names_a_stale_block_and_make_docs_fixes_it(tmp_path, capsys):
    page = ("# Title\n\n<!-- generated: paper -->\nan old figure\n<!-- end generated -->\n\n"
            "text after\n")
    write(tmp_path, "README.md", "# Front\n")
    write(tmp_path, "docs/page.md", page)
    assert main(["--check", "--root", str(tmp_path)]) == 1
    assert "docs/page.md: block 'paper'" in capsys.readouterr().err
    assert (tmp_path / "docs/page.md").read_text() == page  # --check writes nothing
    assert main(["--root", str(tmp_path)]) == 0
    text = (tmp_path / "docs/page.md").read_text()
    assert "an old figure" not in text and "| SpaAtn+Q+TemAtn+Ind | 93.2 |" in text
    assert text.startswith(
        "# Title\n\n<!-- generated: paper -->\nFrom `tools/experiments/cells.py`")
    assert text.endswith("<!-- end generated -->\n\ntext after\n")
    assert main(["--check", "--root", str(tmp_path)]) == 0
    assert fill(text, tmp_path) == (text, [])


@pytest.mark.parametrize(("text", "message"), [
    ("<!-- generated: nonsense -->\n<!-- end generated -->\n",
     "unknown generated block 'nonsense'"),
    ("<!-- generated: paper -->\nno end\n", "block 'paper' has no '<!-- end generated -->'"),
    ("<!-- end generated -->\n", "without a block"),
    ("<!-- generated: paper -->\n<!-- generated: rows -->\n<!-- end generated -->\n",
     "block 'rows' starts inside block 'paper'"),
])
def test_broken_markers_are_errors_naming_the_file_and_line(tmp_path, capsys, text, message):
    write(tmp_path, "README.md", text)
    assert main(["--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: README.md:") and message in err


def test_the_headline_block_says_official_whatever_protocols_the_params_list(fake):
    """The summary's headline is official always (pipeline.stages.summary.HEADLINE_PROTOCOL), so
    the README says so also when evaluate.protocols puts torchreid first or leaves official out."""
    write(fake, "params.yaml", "data:\n  video: [synthetic]\n  splits: [0]\nevaluate:\n"
                               "  protocols: [torchreid]\n")
    assert "`metrics/results/synthetic.json`): official protocol, percent" in render(
        "headline", fake)


def test_make_docs_with_a_refused_params_file_is_one_line_and_writes_nothing(fake, capsys):
    """A params.yaml the pipeline refuses (a misspelt key): `make docs` and `--check` end with
    the params error in one line naming the file, exit status 1, the page untouched."""
    write(fake, "params.yaml", "data:\n  video: [synthetic]\n  splits: [0]\nevaluate:\n"
                               "  protocolz: [official]\n")
    page = "# Front\n\n<!-- generated: headline -->\nold\n<!-- end generated -->\n"
    write(fake, "README.md", page)
    for check in ([], ["--check"]):
        assert main([*check, "--root", str(fake)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: {fake / 'params.yaml'}: unknown key evaluate.protocolz; "
                              "the keys of evaluate are: protocols, ")
        assert err.count("\n") == 1 and "Traceback" not in err
    assert (fake / "README.md").read_text() == page


def test_every_block_name_has_a_renderer_and_the_index_names_them_all():
    index = (ROOT / "docs/README.md").read_text()
    assert all(callable(BLOCKS[name]) and f"`{name}`" in index for name in BLOCKS)


# --- (b) no figure typed by hand ------------------------------------------------------------------

# Measured-looking figures. Parameter values (`lr 0.1`, `1.0e-4`, `m = 0.5`), sizes of inputs
# (`256x128`, `8 x 4`, `1980 x 12180`) and the paper's equations match none of these.
FIGURES = {
    "percentage": r"\d+(?:\.\d+)?\s?%",
    "multiplier": r"\b\d+\.\d+\s?x\b|\b\d+(?:\.\d+)?\s?x\s+(?:faster|slower|quicker|as fast)",
    "comparison": r"\b\d+(?:\.\d+)?\s+vs\.?\s+\d",
    "plus-minus": r"\d\s*±\s*\d",
    "score": r"(?:rank-?1|R1|mAP)\b[^.;\n|]{0,20}?\b\d+\.\d|\b\d+\.\d+\s*(?:rank-?1|mAP)\b"
             r"|(?<![\w.-])[+-]?\d+(?:\.\d+)?\s+(?:rank-?1|mAP|points?)\b",
    "duration": r"\b\d+(?:\.\d+)?\s?(?:ms|s|sec|seconds?|min|minutes?|h|hours?)\b|\b\d+m\d+s\b",
    "size": r"\b\d+(?:[.,]\d+)?\s?(?:[KMGT]i?B)\b",
    "rate": r"\b\d+(?:\.\d+)?\s?(?:frames/s|images/s|fps|GFLOP/s|it/s)",
    "decimal table cell": r"\|\s*[-+]?\d+\.\d+\s*(?:±[^|]*)?\|",
}
PATTERN = re.compile("|".join(f"(?:{p})" for p in FIGURES.values()))
# Figures that are not measurements, each with its reason: (page, exact text).
EXCEPTIONS = {
    ("docs/gpus.md", "30 s after forwarding it (its default)"): "torchrun's own default timeout",
    ("docs/gpus.md", "128 KiB at ResNet-50's"): "arithmetic: 2048 x 8 x 4 values x 2 bytes",
    ("docs/gpus.md", "take about 150 GB"): "arithmetic: MARS's frame count x 128 KiB",
}


def prose(text: str) -> str:
    """``text`` with the generated blocks and fenced code blanked (line numbers kept)."""
    lines, inside = text.splitlines(), False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            inside, lines[i] = not inside, ""
        elif docs.START.match(line):
            inside, lines[i] = True, ""
        elif line == docs.END:
            inside, lines[i] = False, ""
        elif inside:
            lines[i] = ""
    return "\n".join(lines)


def hand_typed(page: str, text: str) -> list[str]:
    text = prose(text)
    for (where, allowed), _ in EXCEPTIONS.items():
        if where == page:
            text = text.replace(allowed, " " * len(allowed))
    return [f"{page}:{text.count(chr(10), 0, m.start()) + 1}: {m[0]!r}"
            for m in PATTERN.finditer(text)]


@pytest.mark.parametrize("path", DOCUMENTS, ids=rel)
def test_no_measured_figure_is_typed_by_hand(path):
    found = hand_typed(rel(path), path.read_text())
    assert not found, ("figures typed by hand (put them in a generated block of tools.project.docs "
                       f"or add a commented exception): {found}")


def test_every_exception_is_still_needed():
    for (page, allowed), reason in EXCEPTIONS.items():
        assert allowed in prose((ROOT / page).read_text()), (page, allowed, reason)
        assert PATTERN.search(allowed), f"{allowed!r} would not be flagged: drop the exception"


@pytest.mark.parametrize("text", [
    "12.3% faster", "0.57 vs 0.40 in NCHW", "only 3.9x faster here", "2x faster", "8m18s",
    "51.6 rank-1", "rank-1 of 48.4", "mAP: 44.6", "+14.6 rank-1", "by 6.8 points",
    "about 7 minutes", "takes 2.96 s", "116 MB", "about 5.5 GB", "98.2 frames/s", "| 32.8 |",
    "| 29.2 ± 1.9 |",
])
def test_the_scan_flags_measured_figures(text):
    assert PATTERN.search(text), text


@pytest.mark.parametrize("text", [
    "lr 0.1 then 0.01", "write `1.0e-4`", "momentum m = 0.5", "an 8x4 grid", "256x128 input",
    "8 x 4 cells", "1980 x 12180", "K(K-1)", "`b_i = floor(i*F/N)`", "Q = ||R R^T - I||_F^2",
    "caching 4x the frames", "P x M", "rank-1/5/10/20", "K = 1, 2, 4, 6, 8", "128-d", "N = 6",
    "seeds 0, 1, 2", "the 10 splits", "python 3.11", "torch 2.14.1",
])
def test_the_scan_leaves_params_sizes_and_equations_alone(text):
    assert not PATTERN.search(text), text


def test_the_scan_skips_generated_blocks_and_code_fences():
    text = ("a\n<!-- generated: bench -->\n| 0.8 |\n<!-- end generated -->\n```\n3.9x faster\n```\n"
            "b 12.5%\n")
    assert hand_typed("p.md", text) == ["p.md:8: '12.5%'"]


# --- (c) the tests the docs name exist ------------------------------------------------------------

NODE = re.compile(r"`(tests/[\w/]+\.py)::([\w:]+)(?:\[[^\]`]*\])?`")


def defined(path: Path) -> set[str]:
    """``name`` of every test function and ``Class::name`` of every method of a test file."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names |= {f"{node.name}::{f.name}" for f in node.body if isinstance(f, ast.FunctionDef)}
    return names


def missing_tests(text: str) -> list[str]:
    return [f"{file}::{name}" for file, name in NODE.findall(text)
            if not (ROOT / file).exists() or name not in defined(ROOT / file)]


def catalogue_rows() -> list[str]:
    text = (ROOT / "docs/bad-inputs.md").read_text()
    table = text.split("## The catalogue", 1)[1].split("\n## ", 1)[0]
    return [line for line in table.splitlines()
            if line.startswith("| ") and not line.startswith(("| input |", "| ---"))]


def test_the_catalogue_has_its_rows():
    assert len(catalogue_rows()) >= 20


@pytest.mark.parametrize("row", catalogue_rows(), ids=lambda row: row.split(" | ")[0][2:40])
def test_every_catalogue_row_names_tests_that_exist(row):
    tests_cell = row.rstrip(" |").rsplit(" | ", 1)[1]
    assert NODE.search(tests_cell), f"no test named in: {row}"
    assert not missing_tests(tests_cell)


@pytest.mark.parametrize("path", DOCUMENTS, ids=rel)
def test_every_test_the_docs_name_exists(path):
    assert not missing_tests(path.read_text())


def test_a_renamed_test_is_caught():
    assert missing_tests("`tests/test_docs.py::test_that_does_not_exist`") == [
        "tests/test_docs.py::test_that_does_not_exist"]
    assert missing_tests("`tests/test_docs.py::test_a_renamed_test_is_caught[x]`") == []


# --- (d) the front page and the links -------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slugs(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a markdown page."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose(text).splitlines():
        if m := re.match(r"^#{1,6}\s+(.+?)\s*$", line):
            slug = re.sub(r"[^\w\- ]", "", m[1].lower()).replace(" ", "-")
            out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return out


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 300, f"README.md has {len(lines)} lines; move reference material to docs/"


def test_readme_layout_table_names_every_module():
    """The repository layout names every module of pipeline/, tools/ and tools' folders in its
    folder's row (tools' folders: in the row of tools/)."""
    text = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(pipeline|tools)/` \| (.+) \|$", text, flags=re.MULTILINE))
    folders = ("pipeline", "tools", *(f"tools/{d.name}" for d in (ROOT / "tools").iterdir()
                                       if (d / "__init__.py").exists()))
    missing = [f"{folder}/{path.name}" for folder in folders
               for path in sorted((ROOT / folder).iterdir())
               if (path.suffix == ".py" and path.name not in ("__init__.py", "__main__.py"))
               or (path.is_dir() and (path / "__init__.py").exists())
               if f"`{path.name}{'/' if path.is_dir() else ''}`"
               not in rows.get(folder.split("/")[0], "")
               and f"| `{folder}/{path.name}/` |" not in text]  # or a row of its own
    assert not missing, f"README.md's layout table does not name {missing}"


def test_readme_contents_list_links_every_section():
    text = (ROOT / "README.md").read_text()
    contents = text.split("## Contents", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^- \[[^\]]+\]\(#([\w-]+)\)$", contents, flags=re.MULTILINE)
    sections = [re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-")
                for h in re.findall(r"^## (.+)$", prose(text), flags=re.MULTILINE)]
    assert listed and set(listed) <= slugs(text)
    assert listed == [s for s in sections if s != "contents"]


@pytest.mark.parametrize("path", DOCUMENTS, ids=rel)
def test_every_relative_link_resolves(path):
    broken = []
    for target in LINK.findall(prose(path.read_text())):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists() or (anchor and dest.suffix == ".md"
                                 and anchor not in slugs(dest.read_text())):
            broken.append(target)
    assert not broken, f"{rel(path)}: broken links {broken}"


def test_slugs_follow_githubs_rule():
    assert slugs("# The paper's tables\n## Real data: disk and time\n## A\n## A\n") == {
        "the-papers-tables", "real-data-disk-and-time", "a", "a-1"}


def test_cache_disk_block_from_the_frame_counts_and_the_bench(tmp_path):
    """Disk = frames x 2048 x 8 x 4 x 2 bytes per cache, times the splits; time = the matrix's
    frames over the bench's ResNet-50 caching rate (10 frames/s here)."""
    bench = {"machine": {"processor": "Test CPU", "cpus_usable": 2},
             "benchmarks": {"cache_throughput_paper": {
                 "figures": {"cache_frames_per_s": 10.0}, "device": "cpu"}}}
    write(tmp_path, "metrics/bench.json", bench)
    out = render("cache-disk", tmp_path)
    assert "2048 x 8 x 4 float16 values (128 KiB) per frame" in out
    assert "the 10.0 frames/s of the `cache_throughput_paper` row" in out
    assert "(Test CPU, 2 usable cores, cpu): a GPU caches far faster" in out
    # 400 x 100 frames x 131072 bytes = 5.24 GB; 10 splits: 400,000 frames / 10 per s = 11.1 h
    assert "| PRID2011 | 40,000 |" in out and "| 10 | 5.2 GB | 52.4 GB | 11.1 h |" in out
    assert "| iLIDS-VID | 43,800 |" in out and "| 10 | 5.7 GB | 57.4 GB | 12.2 h |" in out
    # 1,191,003 frames = 156.1 GB, one split: 33.1 h
    assert "| MARS | 1,191,003 | train 509,914 + test 681,089 frames (published) | 1 | 156.1 GB " \
           "| 156.1 GB | 33.1 h |" in out
    bench["benchmarks"]["cache_throughput_paper"] = {"skipped": True}
    write(tmp_path, "metrics/bench.json", bench)
    out = render("cache-disk", tmp_path)
    assert "not measured yet: run `make bench`" in out and "| 156.1 GB | not measured |" in out


def test_timings_block_from_the_stages_records(tmp_path):
    """The stages of dvc.lock, each from its own record (metrics/timings/), in the order they run;
    a record of a stage the lock does not list (another run's) is never read."""
    seconds = {"summary": 10.0, "check": 5.0, "attention@synthetic-0": 45.0, "pretrain": 120.0,
               "joint@synthetic-0": 20.0}
    for stage, value in seconds.items():
        write(tmp_path, timing_path(stage).as_posix(),
              {"stage": stage, "seconds": value, "machine": {"cpu": "Some CPU", "cores": 2}})
    write(tmp_path, "metrics/timings/evaluate/synthetic-1.json", {"stage": "x", "seconds": 1e6})
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {
        s: {"cmd": "python"} for s in seconds}}))
    body = render("timings", tmp_path)
    lines = body.splitlines()
    order = [line.split(" | ")[0].strip("| `") for line in lines if line.startswith("| `")]
    assert order == ["check", "pretrain", "attention@synthetic-0", "joint@synthetic-0", "summary"]
    assert "| all stages | 3m20.0s | 100% |" in body and "Some CPU, 2 cores" in body
    assert "0m45.0s" in body and "| 60% |" in body  # pretrain: 120 of 200 s
    assert "1m20.0s, 0.40 of the full run" in body  # check + attention + joint + summary
    assert "Not yet produced" in render("timings", tmp_path / "elsewhere")
    (tmp_path / "metrics/timings/summary.json").unlink()  # a locked stage without its record
    assert "Not yet produced" in render("timings", tmp_path)


def test_figure_block_shows_the_first_query_of_the_first_split(tmp_path):
    """The picture's name holds the query's pid and camera: read from the folder, first in order;
    a run without pictures renders the line naming the folder."""
    write(tmp_path, "params.yaml", "data:\n  video: [synthetic]\n  splits: [0]\nmodel:\n  K: 4\n")
    assert "Not yet produced: `metrics/plots/attention/synthetic-0/*.png`" in render("figure",
                                                                                    tmp_path)
    for name in ("q0003_pid9_cam2.png", "q0000_pid71_cam3.png"):
        write(tmp_path, f"metrics/plots/attention/synthetic-0/{name}", "")
    assert render("figure", tmp_path) == (
        "![Fig. 3 style: the first query of synthetic split 0: its frames, their body parts and "
        "the 4 spatial attention maps](metrics/plots/attention/synthetic-0/q0000_pid71_cam3.png)\n")


def test_claims_block_reads_the_claims_of_the_first_protocol(tmp_path):
    """The README's claims come from report.json: those of the first protocol of each set (never
    the other protocol's), the paper's orderings apart from this project's targets."""
    write_report_json(tmp_path, [report_row("Baseline", "baseline", 0.30, 0.30),
                                 report_row("SpaAtn+Q", "spatial", 0.40, 0.40, person=0.5),
                                 report_row("SpaAtn+Q+TemAtn", "temporal", 0.45, 0.45,
                                            person=0.5)],
                      [report_row("Baseline", "baseline", 0.70, 0.70),
                       report_row("SpaAtn+Q", "spatial", 0.60, 0.60, person=0.5)])
    out = render("claims", tmp_path)
    # each heading names the schedule the claims were measured under (the params' per_set)
    paper, target = re.split(r"\*\*This project's targets \(thresholds set here, not numbers of "
                             r"the\s+paper\)\*\*, synthetic, official\s+protocol,\s+schedule\s+"
                             r"per_set:", out)
    assert paper.startswith("From `metrics/report.json`, baseline commit `0123456`; Table 1's "
                            "seeds 0, 1; rank-1 unless said;")
    assert re.search(r"\*\*The paper's orderings \(its Table 1: each row above the one it builds "
                     r"on\)\*\*,\s+synthetic,\s+official\s+protocol,\s+schedule\s+per_set:", paper)
    assert ("- SpaAtn+Q+TemAtn > SpaAtn+Q: holds (45.0 vs 40.0, +5.0; noise ±2.0)"
            in paper)
    assert "- SpaAtn+Q person mass >= 0.6: does not hold (0.500)" in target
    assert "- SpaAtn+Q map entropy >= 0.02: " not in target
    assert "60.0 vs" not in out and "torchreid" not in out  # the second protocol stays out


def test_the_architecture_block_lists_every_stage_its_entry_point_and_its_modules(tmp_path):
    from tools.project.docs.architecture import EVERY_STAGE, architecture_block
    from tools.project.docs.common import DocsError

    text = architecture_block(ROOT)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    rows = {line.split(" | ")[0].strip("| `"): line.split(" | ")
            for line in text.splitlines() if line.startswith("| `")}
    assert list(rows) == list(stages)
    assert rows["cache"][1] == "`pipeline/stages/cache.py`"
    assert "train" not in rows["cache"][2].split(", ")  # no training loop behind the cache
    assert "train" in rows["joint"][2].split(", ") and "union" in rows["joint"][2].split(", ")
    assert not any(every.removeprefix("pipeline/").removesuffix(".py") in row[2].split(", ")
                   for row in rows.values() for every in EVERY_STAGE)
    (tmp_path / "dvc.yaml").write_text("stages: [")
    with pytest.raises(DocsError, match=r"^dvc.yaml: not readable"):
        architecture_block(tmp_path)
