"""tools/gpu_stage.py and tools/gpu_bringup.py without an engine: the split archive and its manifest (parts,
sha256, reassembly, every way a part can be missing or wrong), the device-call plan, the prune list against
the wheel layout, the bring-up's arguments and its JSON (budget, a failing step, the schema check)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def stage():
    yield _load("gpu_stage")


@pytest.fixture(scope="module")
def bringup(stage):
    yield _load("gpu_bringup")
    sys.modules.pop("gpu_bringup", None)


@pytest.fixture
def archive(tmp_path):
    data = os.urandom(2500) + b"tail"
    path = tmp_path / "fake.tar.xz"
    path.write_bytes(data)
    return path, data


def _split(stage, archive, tmp_path, part_bytes=1000):
    path, _ = archive
    parts = stage.split_file(str(path), str(tmp_path / "parts"), part_bytes)
    m = stage.manifest(str(path), parts)
    stage.write_json(str(tmp_path / "parts" / "manifest.json"), m)
    return m


# ------------------------------------------------------------------------------------- split / manifest

def test_split_sizes_and_hashes(stage, archive, tmp_path):
    m = _split(stage, archive, tmp_path)
    assert [p["bytes"] for p in m["parts"]] == [1000, 1000, 504]
    assert [p["name"] for p in m["parts"]] == [f"fake.tar.xz.part0{i}" for i in (1, 2, 3)]
    for p in m["parts"]:
        blob = (tmp_path / "parts" / p["name"]).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == p["sha256"]
    assert m["sha256"] == hashlib.sha256(archive[1]).hexdigest() and m["bytes"] == 2504
    assert m["part_bytes_max"] == 1000


def test_split_exact_multiple_and_stale_parts_removed(stage, tmp_path):
    path = tmp_path / "a.tar.xz"
    path.write_bytes(b"x" * 5000)
    stage.split_file(str(path), str(tmp_path / "p"), 1000)  # 5 parts
    path.write_bytes(b"y" * 2000)
    parts = stage.split_file(str(path), str(tmp_path / "p"), 1000)
    assert [p["bytes"] for p in parts] == [1000, 1000]
    assert sorted(os.listdir(tmp_path / "p")) == ["a.tar.xz.part01", "a.tar.xz.part02"]


def test_split_rejects_bad_part_size(stage, archive, tmp_path):
    with pytest.raises(stage.StageError, match="positive"):
        stage.split_file(str(archive[0]), str(tmp_path / "p"), 0)


def test_reassemble_round_trip_and_reuse(stage, archive, tmp_path):
    m = _split(stage, archive, tmp_path)
    out = tmp_path / "site" / "whole.tar.xz"
    stage.reassemble(m, str(tmp_path / "parts"), str(out))
    assert out.read_bytes() == archive[1]
    for p in m["parts"]:  # a whole, checked archive is reused without its parts
        os.remove(tmp_path / "parts" / p["name"])
    assert stage.reassemble(m, str(tmp_path / "parts"), str(out)) == str(out)


@pytest.mark.parametrize("damage, message", [
    ("missing", "part02 missing"),
    ("short", "part02 has 999 bytes"),
    ("flipped", "part02 sha256 differs"),
])
def test_reassemble_names_the_bad_part(stage, archive, tmp_path, damage, message):
    m = _split(stage, archive, tmp_path)
    part = tmp_path / "parts" / "fake.tar.xz.part02"
    blob = part.read_bytes()
    if damage == "missing":
        part.unlink()
    elif damage == "short":
        part.write_bytes(blob[:-1])
    else:
        part.write_bytes(bytes([blob[0] ^ 1]) + blob[1:])
    out = tmp_path / "whole"
    with pytest.raises(stage.StageError, match=message):
        stage.reassemble(m, str(tmp_path / "parts"), str(out))
    assert not out.exists()


def test_reassemble_checks_the_whole(stage, archive, tmp_path):
    m = _split(stage, archive, tmp_path)
    m["sha256"] = "0" * 64  # parts fine, whole wrong: a manifest of another archive
    with pytest.raises(stage.StageError, match="reassembled"):
        stage.reassemble(m, str(tmp_path / "parts"), str(tmp_path / "whole"))
    assert not [f for f in os.listdir(tmp_path) if f.startswith("whole")]


@pytest.mark.parametrize("content, message", [
    (None, "no manifest"),
    ("{", "not JSON"),
    (json.dumps({"schema": "other"}), "schema"),
    (json.dumps({"schema": "specrollout.gpu_stage/1", "archive": "a", "bytes": 1, "sha256": "x"}), "no 'parts'"),
    (json.dumps({"schema": "specrollout.gpu_stage/1", "archive": "a", "bytes": 1, "sha256": "x", "parts": []}),
     "non-empty"),
])
def test_read_manifest_refuses(stage, tmp_path, content, message):
    path = tmp_path / "manifest.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(stage.StageError, match=message):
        stage.read_manifest(str(path))


def test_cli_split_then_join(stage, archive, tmp_path, capsys):
    assert stage.main(["split", str(archive[0]), str(tmp_path / "parts")]) == 0
    m = stage.read_manifest(str(tmp_path / "parts" / "manifest.json"))
    assert len(m["parts"]) == 1 and m["sha256"] == hashlib.sha256(archive[1]).hexdigest()
    assert stage.main(["join", str(tmp_path / "parts" / "manifest.json"), str(tmp_path / "parts"),
                       str(tmp_path / "whole")]) == 0
    assert (tmp_path / "whole").read_bytes() == archive[1]
    (tmp_path / "parts" / m["parts"][0]["name"]).write_bytes(b"junk")
    os.remove(tmp_path / "whole")
    assert stage.main(["join", str(tmp_path / "parts" / "manifest.json"), str(tmp_path / "parts"),
                       str(tmp_path / "whole")]) == 2
    assert stage.main(["bogus"]) == 2


# ------------------------------------------------------------------------------------------- call plan

def _m(*sizes):
    return {"parts": [{"name": f"p{i}", "bytes": s, "sha256": ""} for i, s in enumerate(sizes, 1)]}


def test_call_plan_testbed_rides_with_the_run_call(stage):
    calls = stage.call_plan(_m(60, 45), testbed_bytes=15, tree_bytes=3, limit=67)
    assert calls == [{"carry": ["p1"], "bytes": 60, "run": False},
                     {"carry": ["p2", "testbed"], "bytes": 60, "run": True}]


def test_call_plan_testbed_alone_when_it_fits_nowhere(stage):
    calls = stage.call_plan(_m(60, 60), testbed_bytes=15, tree_bytes=3, limit=67)
    assert [c["carry"] for c in calls] == [["p1"], ["testbed"], ["p2"]] and calls[-1]["run"]


def test_call_plan_refuses_a_part_that_cannot_travel(stage):
    with pytest.raises(stage.StageError, match="does not fit"):
        stage.call_plan(_m(66), testbed_bytes=1, tree_bytes=3, limit=67)


# --------------------------------------------------------------------------------------- wheels, prune

def test_prune_list(stage):
    assert stage.prune_reason("vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so")
    assert stage.prune_reason("vllm/third_party/deep_gemm/include/cute/tensor.hpp")
    assert stage.prune_reason("vllm/third_party/deep_gemm") is None  # a prefix matches inside the folder only
    for kept in stage.KEEP + ("vllm/__init__.py", "vllm/vllm_flash_attn/flash_attn_interface.py"):
        assert stage.prune_reason(kept) is None, kept


def test_wheel_entries_match_pins(stage, tmp_path):
    pins = (("pydantic_core", "2.41.5", "via pydantic"), ("pyzmq", "27.1.0", ">=25.0.0"))
    (tmp_path / "pydantic_core-2.41.5-cp312-cp312-manylinux_2_17_x86_64.whl").write_bytes(b"a")
    (tmp_path / "pyzmq-27.1.0-cp312-abi3-manylinux_2_28_x86_64.whl").write_bytes(b"b")
    (tmp_path / "pyzmq-26.0.0-cp312-abi3-manylinux_2_28_x86_64.whl").write_bytes(b"c")  # an older pin
    got = stage.wheel_entries(str(tmp_path), pins)
    assert [(e["name"], e["file"].split("-")[1]) for e in got] == [("pydantic_core", "2.41.5"), ("pyzmq", "27.1.0")]
    assert got[1]["sha256"] == hashlib.sha256(b"b").hexdigest()
    with pytest.raises(stage.StageError, match="cbor2==5.7.1"):
        stage.wheel_entries(str(tmp_path), pins + (("cbor2", "5.7.1", ""),))


def test_pinned_wheels_are_well_formed(stage):
    names = [n.lower() for n, _, _ in stage.WHEELS]
    assert len(names) == len(set(names))
    assert not set(names) & {n.lower() for n in stage.IMAGE_HAS}
    for name, version, requires in stage.WHEELS:
        assert version[0].isdigit() and "=" not in version, name
        assert requires == "" or requires.startswith(("via ", ">", "<", "=", "!", "~")), (name, requires)


def test_satisfies(stage):
    assert stage.satisfies("2.12.5", ">=2.12.0")
    assert not stage.satisfies("2.11.0", ">=2.12.0")
    assert stage.satisfies("0.1", "via openai")


def test_plugin_dist_info_carries_our_entry_points(stage, tmp_path):
    from importlib import metadata

    stage.write_plugin_dist_info(str(tmp_path), REPO)
    dists = list(metadata.distributions(path=[str(tmp_path)]))
    assert [d.metadata["Name"] for d in dists] == ["verl-specrollout"]
    eps = {(ep.group, ep.name): ep.value for ep in dists[0].entry_points}
    assert eps[("vllm.general_plugins", "specrollout")] == "verl_specrollout.vllm_adapter.engine_patches:register"
    assert eps[("verl.plugins", "specrollout")] == "verl_specrollout.register_rollout"


# ----------------------------------------------------------------------------------------------- args

def test_args_defaults_per_device(bringup, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    cpu = bringup.parse_args(["--device", "cpu", "--tiny"])
    assert (cpu.shape, cpu.dtype, cpu.batches, cpu.ks, cpu.budget_s) == ("tiny", "float32", [1, 4], [1, 2], 150.0)
    assert cpu.out == os.path.join("results", "gpu_bringup.json") and cpu.testbed_dir is None
    gpu = bringup.parse_args(["--device", "cuda", "--budget-s", "0", "--steps", "a,b,d"])
    assert (gpu.shape, gpu.dtype, gpu.batches, gpu.ks, gpu.budget_s, gpu.steps) == (
        "7b", "bfloat16", [1, 16, 128], [1, 2, 4], None, "abd")
    assert gpu.max_num_seqs == 128 and gpu.variants == ["spec_eager", "spec_v2", "spec_keep"]
    monkeypatch.setenv("OUT", "/tmp/x")
    assert bringup.parse_args(["--device", "cpu", "--variants", ""]).out == "/tmp/x/gpu_bringup.json"


@pytest.mark.parametrize("argv", [["--steps", "ag"], ["--steps", ""], ["--batches", "0,4"], ["--ks", "0,1"],
                                  ["--ks", "a"], ["--tokens", "0"], ["--variants", "spec_fast"],
                                  ["--shape", "70b"]])
def test_args_refused(bringup, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        bringup.parse_args(["--device", "cpu"] + argv)
    assert exc.value.code == 2


def test_default_testbed_dir_prefers_medium(bringup, tmp_path):
    assert bringup.default_testbed_dir(str(tmp_path)) is None
    for size in ("tiny", "medium"):
        os.makedirs(tmp_path / "testbed" / size / "target")
    assert bringup.default_testbed_dir(str(tmp_path)).endswith(os.path.join("testbed", "medium"))


# ---------------------------------------------------------------------------------------------- JSON

def test_step_ms_uses_full_batch_intervals(bringup):
    marks = [(0.0, 4, 0), (0.010, 4, 1), (0.030, 4, 1), (0.050, 4, 1), (0.200, 2, 1), (0.210, 0, 1)]
    assert bringup.step_ms(marks, 4) == pytest.approx(20.0)
    assert bringup.step_ms(marks[:2], 4) is None


def test_heavy_tail_lengths(bringup):
    n = bringup.heavy_tail_lengths(200, 96)
    assert n == bringup.heavy_tail_lengths(200, 96) and min(n) >= 4 and max(n) == 96
    assert sorted(n)[100] < 96 / 2  # most samples end early


def test_run_records_failures_budget_and_schema(bringup, tmp_path):
    args = bringup.parse_args(["--device", "cpu", "--tiny", "--out", str(tmp_path / "r.json")])
    run = bringup.Run(args)
    run.save()
    on_disk = json.loads((tmp_path / "r.json").read_text())
    assert on_disk["schema"] == bringup.SCHEMA and set(on_disk["steps"]) == set(bringup.STEPS.values())

    def broken(rec):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore")

    def fine(rec):
        rec["points"] = [{"batch": 1, "variant": "plain", "k": None, "step_ms": 1.0, "steps": 3, "wall_s": 0.1,
                          "tokens": 3, "acceptance_length": None}]

    run.guarded("sleep", broken)
    run.guarded("step_time", fine)
    on_disk = json.loads((tmp_path / "r.json").read_text())  # rewritten after every step
    assert on_disk["steps"]["sleep"]["status"] == "failed"
    assert on_disk["steps"]["sleep"]["error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert on_disk["steps"]["step_time"]["status"] == "ok" and not on_disk["complete"]
    args.budget_s = -1.0  # spent: the next step is not started
    run.guarded("grpo", fine)
    assert run.result["steps"]["grpo"] == {"status": "skipped", "reason": "budget"}
    assert "budget" in run.result["stopped_early"]
    for name in ("startup", "graphs", "memory"):
        run.result["steps"][name] = {"status": "skipped", "reason": "not in --steps"}
    assert bringup.validate_result(run.result) == []


def test_validate_result_finds_problems(bringup, tmp_path):
    run = bringup.Run(bringup.parse_args(["--device", "cpu", "--tiny", "--out", str(tmp_path / "r.json")]))
    r = run.result
    r["steps"]["sleep"] = {"status": "failed"}
    r["steps"]["step_time"] = {"status": "ok", "points": [{"batch": 1}]}
    r["engines"]["spec"] = {"facts": {"cudagraph_mode": "NONE"}}
    problems = bringup.validate_result(r)
    assert any("sleep" in p and "without" in p for p in problems)
    assert any("step_time point" in p for p in problems)
    assert any("engine spec" in p for p in problems)
    del r["engines"]
    assert bringup.validate_result(r) == ["missing key 'engines'"]


# ------------------------------------------------------------------------------------------ install

def _wheel(path, name, version):
    """A minimal valid wheel of one module `name` (pip installs it offline)."""
    import zipfile

    info = f"{name}-{version}.dist-info"
    files = {f"{name}.py": f"VERSION = {version!r}\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for n, text in files.items():
            z.writestr(n, text)


def test_install_unpacks_installs_what_is_missing_and_is_idempotent(stage, tmp_path):
    import tarfile

    tree = tmp_path / "tree"
    (tree / "site" / "fakevllm").mkdir(parents=True)
    (tree / "site" / "fakevllm" / "__init__.py").write_text("")
    (tree / "wheels").mkdir()
    _wheel(tree / "wheels" / "specrollout_fake_dep-1.0-py3-none-any.whl", "specrollout_fake_dep", "1.0")
    _wheel(tree / "wheels" / "pytest-0.1-py3-none-any.whl", "pytest", "0.1")  # present here at a newer version
    info = {"wheels": [{"name": "specrollout_fake_dep", "version": "1.0", "requires": "",
                        "file": "specrollout_fake_dep-1.0-py3-none-any.whl"},
                       {"name": "pytest", "version": "0.1", "requires": "via x", "file": "pytest-0.1-py3-none-any.whl"}],
            "image_has": ["pytest", "specrollout-no-such-dist"]}
    (tree / "stage_info.json").write_text(json.dumps(info))
    archive = tmp_path / stage.ARCHIVE
    with tarfile.open(archive, "w:xz") as tar:
        for name in ("site", "wheels", "stage_info.json"):
            tar.add(tree / name, arcname=name)
    stage_dir = tmp_path / "stage"
    parts = stage.split_file(str(archive), str(stage_dir / "parts"), 700)
    stage.write_json(str(stage_dir / "parts" / "manifest.json"), stage.manifest(str(archive), parts))
    site, work = tmp_path / "site", tmp_path / "work"

    rec = {}
    stage.install(str(stage_dir), str(site), str(work), REPO, rec)
    assert (site / "fakevllm" / "__init__.py").is_file()
    assert (site / "specrollout_fake_dep.py").is_file() and not (site / "pytest.py").exists()
    assert rec["wheels_installed"] == ["specrollout_fake_dep-1.0-py3-none-any.whl"]
    assert [w.split("==")[0] for w in rec["wheels_present"]] == ["pytest"]
    assert rec["image_missing"] == ["specrollout-no-such-dist"]
    assert (site / "verl_specrollout-0.1.0.dist-info" / "entry_points.txt").is_file()
    (site / "marker").write_text("kept")
    rec2 = {}
    stage.install(str(stage_dir), str(site), str(work), REPO, rec2)  # stamped: nothing redone
    assert (site / "marker").is_file() and "wheels_installed" not in rec2


def test_needs_glibc_takes_each_files_lowest_tag(stage, tmp_path):
    for name in ("a-1-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl",
                 "b-1-cp39-abi3-manylinux_2_31_x86_64.whl", "c-1-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"")
    assert stage.needs_glibc(str(tmp_path), "vllm-0.24.0-cp38-abi3-manylinux_2_28_x86_64.whl") == "2.31"
    assert stage.needs_glibc(str(tmp_path / "none")) == "2.17"
