"""Issue 15: choosing the backend, without a cluster (and mostly without ray): the options and their help, bad
settings refused with exit code 2 naming the variable, ``--backend ray`` without ray installed a clear error, the
local path importing nothing of Ray, and the planner's projection arithmetic."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO, textured_image, warp_affine
from scenario_factory import loo_and_split, write_image

from matcher.backends import Node, planner
from matcher.backends.local import LocalBackend

NO_RAY = "import sys; sys.modules['ray'] = None; sys.argv[0] = {prog!r}; "  # `import ray` fails as if not installed


def run(code: str, *args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, env={**os.environ, **(env or {})})


WHALEMATCH = "from matcher.curation.cli import main; sys.exit(main(sys.argv[1:]))"
MAIN = "import runpy; sys.argv[0] = 'main.py'; runpy.run_path('main.py', run_name='__main__')"


@pytest.fixture
def pair(tmp_path):
    img = textured_image(5)
    write_image(tmp_path / "a.jpg", img)
    write_image(tmp_path / "b.jpg", warp_affine(img)[0])
    return tmp_path / "a.jpg", tmp_path / "b.jpg"


def test_backend_ray_without_ray_installed_is_a_clear_error(pair, tmp_path):
    a, b = pair
    res = run(NO_RAY.format(prog="whalematch") + WHALEMATCH, "verify", str(a), str(b), "--preset", "sift-mnn",
              "--cache-dir", str(tmp_path / "cache"), "--backend", "ray", "--quiet")
    assert res.returncode == 2, res.stderr
    assert "--backend ray needs the ray package" in res.stderr and "pip install 'whalematch[ray]'" in res.stderr
    assert "Traceback" not in res.stderr
    loo_and_split(tmp_path / "data", n_whales=2, n_loo=1)
    res = run("import sys; sys.modules['ray'] = None; " + MAIN, "--data-dir", str(tmp_path / "data"), "--output",
              str(tmp_path / "out.csv"), "--preset", "sift-mnn", "--no-cache", "--backend", "ray",
              env={"WHALEMATCH_BACKEND": "local"})
    assert res.returncode == 2, res.stderr
    assert "--backend ray needs the ray package" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out.csv").exists()


def test_the_local_backend_needs_no_ray(pair, tmp_path):
    a, b = pair
    code = (NO_RAY.format(prog="whalematch") + "from matcher.curation.cli import main; rc = main(sys.argv[1:]); "
            "assert sys.modules['ray'] is None and 'matcher.backends.ray_backend' not in sys.modules; sys.exit(rc)")
    res = run(code, "verify", str(a), str(b), "--preset", "sift-mnn", "--cache-dir", str(tmp_path / "cache"),
              "--out", str(tmp_path / "out"), "--quiet")
    assert res.returncode == 0, res.stderr
    assert "inliers" in res.stdout


@pytest.mark.parametrize("prog", ["whalematch", "main.py"])
@pytest.mark.parametrize("variable, value", [("WHALEMATCH_BACKEND", "cloud"), ("WHALEMATCH_RAY_ADDRESS", "nohost"),
                                             ("WHALEMATCH_PLAN_NODES", "0,8")])
def test_bad_backend_settings_in_the_environment_exit_2_naming_the_variable(prog, variable, value):
    code = "import sys; " + (WHALEMATCH if prog == "whalematch" else MAIN)
    res = run(code, *(["audit", "--help"] if prog == "whalematch" else ["--help"]), env={variable: value})
    assert res.returncode == 2, res.stdout
    assert f"{variable}={value!r}" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("args, message", [(["--backend", "cloud"], "invalid choice: 'cloud'"),
                                           (["--ray-address", "ray://head:10001"], "Ray Client"),
                                           (["--ray-address", "head"], "expected auto, local or HOST:PORT"),
                                           (["--plan-nodes", "1,x"], "expected whole numbers")])
def test_bad_backend_options_exit_2(args, message, tmp_path):
    res = run("import sys; " + WHALEMATCH, "audit", "--metadata", str(tmp_path / "m.csv"), *args)
    assert res.returncode == 2 and message in res.stderr, res.stderr


@pytest.mark.parametrize("prog", ["whalematch", "main.py"])
def test_the_backend_options_show_their_defaults(prog):
    res = run("import sys; " + (WHALEMATCH if prog == "whalematch" else MAIN),
              *(["search", "--help"] if prog == "whalematch" else ["--help"]), env={"COLUMNS": "200"})
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    for option, default in (("--backend {local,ray}", "local"), ("--ray-address RAY_ADDRESS", "auto"),
                            ("--plan-nodes PLAN_NODES", "1,8,32")):
        start = text.index(option, text.index("options:"))
        assert f"(default: {default})" in text[start : start + 500], text[start : start + 500]
    if prog == "whalematch":
        assert "--batch BATCH" in text and "OUT/batch.csv" in text


class FakeCluster:
    label = "ray: 2 nodes, 6 CPUs, 2 GPUs"
    slots = 6

    def nodes(self):
        return [Node("a", 3, 1), Node("b", 3, 1)]

    def work(self):
        return {}


def test_the_plan_projects_the_measured_rates_onto_the_cluster_and_onto_n_nodes():
    pilot = planner.Pilot(pairs=600, images=20, tasks=10, pair_s=60.0, image_s=10.0, wall_s=12.0, slots=6)
    assert pilot.pairs_per_worker == 10.0 and pilot.images_per_worker == 2.0
    # the rest: 60,000 pairs at 10/s on 6 CPUs = 1,000 s; 200 images at 2/s on 2 GPUs = 50 s
    assert planner.project(60_000, 200, pilot, 6, 2) == pytest.approx(1050.0)
    lines = planner.lines(FakeCluster(), pilot, 60_600, 220, "60,600 pairs to verify", node_counts=(1, 8))
    text = "\n".join(lines)
    assert lines[0] == "plan (ray: 2 nodes, 6 CPUs, 2 GPUs):"
    assert "600 pairs and 20 images in 10 tasks, 12.0 s (the workers' start-up included): 10.0 pairs/s per worker, " \
           "2.00 images/s per GPU" in text
    assert "this cluster (2 nodes, 6 CPUs, 2 GPUs): 17.5 min" in text  # 1,050 s
    assert "1 node: 35.0 min" in text  # 60,000 / 30 + 200 / 2 = 2,100 s
    assert "8 nodes: 4.4 min" in text  # 60,000 / 240 + 200 / 16 = 262.5 s
    assert "(nodes of 3 CPUs + 1 GPU each)" in text
    # without work left nothing is measured, and the plan says so
    assert planner.lines(FakeCluster(), None, 0, 0, "nothing")[-1] == "  pilot: nothing to measure (no work left)"


def test_the_pilot_runs_growing_parts_of_the_work_and_keeps_count():
    backend, parts = LocalBackend(workers=2), []

    def run_part(part):
        parts.append(len(part))
        return len(part)

    pilot = planner.run_pilot(backend, run_part, list(range(1000)), seconds=60.0)
    assert parts == [16, 64, 256, 664] and pilot.pairs == pilot.items == 1000
    assert pilot.pairs_per_worker is not None
