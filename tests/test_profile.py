"""`terrazzo profile` for real on this machine (a few points, few repeats): the profile round-trips
through its YAML schema, defines this machine as a device, and calibrates the cost functions exactly
at its points; bad files and a missing GPU give clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from terrazzo.catalog.catalog_loader import load_catalog
from terrazzo.cost.calibration import ann_estimate, embed_estimate
from terrazzo.cost.candidates import deployment
from terrazzo.cost.llm import decode_roofline, decode_step, prefill
from terrazzo.errors import ProfileError, SpecError
from terrazzo.profile.measure import pin_threads
from terrazzo.profile.profile_command import Options, profile_machine
from terrazzo.profile.profile_file import Profile, load_profile, write_profile
from terrazzo.spec.spec_loader import load_cluster

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Profile, Path]:
    opts = Options.quick(repeats=3, warmup=1, isl=(16, 64), decode_batch=(1, 2), decode_context=(16, 64),
                         embed_texts=(1, 2), embed_tokens=(8, 16), embed_batch_tokens=8, ann_vectors=(500, 2_000),
                         ann_k=(1, 4), transfer_bytes=(1024, 65536), gemm_n=128, copy_mb=8)
    prof = profile_machine(opts)
    path = tmp_path_factory.mktemp("profile") / "machine.yaml"
    write_profile(prof, path)
    return prof, path


def test_a_real_profile_round_trips_through_its_yaml(measured):
    prof, path = measured
    again = load_profile(path)
    assert again == prof
    assert again.to_yaml() == path.read_text()
    assert prof.device.name == "local-cpu" and prof.device.defines and prof.device.cores == 1
    assert prof.machine.torch_threads == 1 and len(prof.machine.hostname_sha256) == 12
    assert prof.llm is not None and prof.llm.random_weights and prof.llm.layers == 4 and prof.llm.hidden == 256
    assert any("random-weight" in n for n in prof.notes), "a profile of the tiny checkpoint must say so"
    assert prof.embed is not None and prof.embed.name == "all-minilm-l6-v2" and prof.embed.layers == 6
    counts = {g: len(getattr(prof.points, g)) for g in ("prefill", "decode", "embed", "ann", "transfer")}
    assert counts == {"prefill": 2, "decode": 4, "embed": 3, "ann": 4, "transfer": 4}
    for group in counts:
        for p in getattr(prof.points, group):
            assert p.timing.repeats == 3 and 0 < p.timing.p10_s <= p.timing.median_s <= p.timing.p90_s
    assert set(prof.fit.ops) == {"prefill", "decode", "embed", "ann_search"}
    assert set(prof.fit.links) == {"pipe", "shm"} and all(f.bw_gbyte_s > 0 for f in prof.fit.links.values())


def test_layering_defines_the_machine_and_is_exact_at_measured_points(measured):
    prof, path = measured
    cat = load_catalog(profiles=[path])
    dev = cat.device("local-cpu")
    assert dev.tflops("fp32") == pytest.approx(prof.device.fp32_tflops)
    assert dev.peak_tflops["fp32"].source.startswith("measured:")
    assert dev.price_usd.source.startswith("derived:") and dev.price_usd.value < cat.device("epyc-9654").price_usd.value
    assert cat.efficiency_for("local-cpu", "decode").source == f"fitted:{path}"
    assert cat.efficiency_for("local-cpu", "memory").source.startswith("derived:")  # not measured: the default
    assert any("applied to local-cpu" in n for n in cat.notes)

    assert prof.llm is not None and prof.embed is not None
    dep = deployment(cat, prof.llm.name, "local-cpu", "fp32", 1, 1)
    for p in prof.points.prefill:
        est = prefill(dep, p.isl)
        assert est.latency_s == pytest.approx(p.timing.median_s, rel=1e-9)
        assert est.source == f"profile:{path}#prefill[batch=1,isl={p.isl}]"
    for p in prof.points.decode:
        assert decode_step(dep, p.batch, p.context).latency_s == pytest.approx(p.timing.median_s, rel=1e-9)
    between = decode_step(dep, 1, 32)  # between two measured contexts: the fit, scaled by their measured/fit ratios
    ratios = sorted(p.timing.median_s / decode_roofline(dep, 1, p.context).latency_s
                    for p in prof.points.decode if p.batch == 1)
    scale = between.latency_s / decode_roofline(dep, 1, 32).latency_s
    assert ratios[0] - 1e-9 <= scale <= ratios[-1] + 1e-9
    assert between.source.endswith("decode[batch=1,context=16..64]")
    assert prefill(dep, 4096).source == f"fitted:{path}"  # beyond the measured prompts: the fitted roofline
    assert prefill(deployment(cat, prof.llm.name, "local-cpu", "fp32", 1, 2), 16).source == f"fitted:{path}"

    minilm = cat.model("all-minilm-l6-v2")
    one = next(p for p in prof.points.embed if p.texts == 1 and p.tokens_per_text == 16)
    assert embed_estimate(cat, dev, minilm, 16, "fp32").latency_s == pytest.approx(one.timing.median_s, rel=1e-9)
    ann = prof.points.ann[0]
    got = ann_estimate(cat, dev, ann.vectors, ann.dimension, ann.k, "flat")
    assert got.latency_s == pytest.approx(ann.timing.median_s, rel=1e-9)
    assert ann_estimate(cat, dev, ann.vectors, ann.dimension, ann.k, "hnsw").source == f"fitted:{path}"


def test_layering_the_same_profile_twice_is_harmless_and_a_stranger_with_its_name_is_refused(measured, tmp_path):
    prof, path = measured
    cat = load_catalog(profiles=[path, path])
    assert sum("applied to local-cpu" in n for n in cat.notes) == 2
    stranger = prof.model_copy(update={"machine": prof.machine.model_copy(update={"hostname_sha256": "f" * 12})})
    other = tmp_path / "other.yaml"
    write_profile(stranger, other)
    cat = load_catalog(profiles=[path, other])
    assert any("NOT applied" in n and "already in the catalog" in n for n in cat.notes)
    assert cat.efficiency_for("local-cpu", "prefill").source == f"fitted:{path}"


@pytest.mark.parametrize(("edit", "field", "message"), [
    (lambda t: t.replace("median_s:", "median:", 1), "points.prefill.0.timing.median",
     "unknown field 'median' (did you mean 'median_s'?)"),
    (lambda t: t.replace("  torch_threads: 1\n", ""), "machine.torch_threads", "required field is missing"),
    (lambda t: t.replace("defines: true", "defines: perhaps"), "device.defines", "valid boolean"),
    (lambda t: t.replace("terrazzo.profile/v1", "terrazzo.plan/v1"), "schema", "not a terrazzo profile"),
    (lambda t: t.replace("points:", "points: [", 1), None, "not valid YAML"),
])
def test_a_bad_profile_names_file_field_and_fix(measured, tmp_path, edit, field, message):
    _, path = measured
    bad = tmp_path / "bad.yaml"
    bad.write_text(edit(path.read_text()))
    with pytest.raises(ProfileError) as info:
        load_catalog(profiles=[bad])
    err = info.value
    assert err.file == str(bad) and message in str(err) and err.fix
    if field:
        assert err.field == field and err.line is not None
        assert f"{bad}:{err.line}: {field}: " in str(err)


def test_a_profile_in_a_cluster_catalog_list_is_layered_relative_to_it(measured, tmp_path):
    _, path = measured
    (tmp_path / "site.yaml").write_text(f"profiles: [{path.name}]\n")
    (tmp_path / path.name).write_text(path.read_text())
    cat = load_catalog([tmp_path / "site.yaml"])
    assert "local-cpu" in cat.devices and cat.profiles[-1].file == str(tmp_path / path.name)


def test_a_cluster_can_name_the_device_a_profile_defines(measured, tmp_path):
    _, path = measured
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("devices: [h100, local-cpu]\n")
    with pytest.raises(SpecError, match="unknown device 'local-cpu'"):
        load_cluster(cluster)
    spec, cat = load_cluster(cluster, [path])
    assert [cat.device(d).name for d in spec.device_types] == ["h100-sxm", "local-cpu"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("defines: true", "defines: perhaps"))
    cluster.write_text("devices: [h100]\ncatalogs: [bad.yaml]\n")
    with pytest.raises(SpecError) as info:  # through a cluster's catalogs: the spec layer's error, naming both
        load_cluster(cluster)
    assert str(cluster) in str(info.value) and f"{bad}:" in str(info.value) and "device.defines" in str(info.value)


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    with pytest.raises(ProfileError, match="sees no CUDA device") as info:
        pin_threads(1, "cuda")
    assert info.value.field == "--device" and "--device cpu" in (info.value.fix or "")
    out = subprocess.run([sys.executable, "-m", "terrazzo.cli", "profile", "--device", "cuda", "-o",
                          str(tmp_path / "p.yaml")], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 2, out.stderr
    assert "sees no CUDA device" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "p.yaml").exists()
