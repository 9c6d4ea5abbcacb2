"""The Ray Data engine of ``polyrnn predict --dataset`` on a local Ray runtime (2 CPUs): the same output as
the local engine. Marked ``ray`` (Ray takes seconds to start); CI runs it after installing the extra."""

from __future__ import annotations

import pytest
from conftest import require_extra
from test_predict_dataset import _outputs, _run, baseline, subset  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.ray, pytest.mark.shared]


@pytest.fixture(scope="module")
def ray_runtime():
    ray = require_extra("ray", "ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_engine_gives_the_local_output(ray_runtime, subset, baseline, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    r = _run(subset, out, runner="ray", workers=2)
    assert r["images"] == 3 and r["errors"] == 0
    assert _outputs(out) == _outputs(baseline)
