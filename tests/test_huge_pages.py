"""The commands start themselves again with glibc's huge-page tunable, once, where it helps."""

import os
import platform
import subprocess
import sys

import pytest

from deft_jax.runtime import huge_pages
from deft_jax.runtime.huge_pages import transparent_huge_page_mode, tunables_with_huge_pages

GLIBC = ("glibc", "2.36")


def test_a_glibc_process_on_a_madvise_kernel_gets_the_tunable():
    assert tunables_with_huge_pages({}, GLIBC, "madvise") == "glibc.malloc.hugetlb=1"


def test_the_users_own_tunables_are_kept_in_front():
    env = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    assert tunables_with_huge_pages(env, GLIBC, "madvise") == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("tunables", ["glibc.malloc.hugetlb=1", "glibc.malloc.hugetlb=0",
                                      "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=2"])
def test_a_process_that_already_says_hugetlb_is_not_restarted(tunables):
    assert tunables_with_huge_pages({"GLIBC_TUNABLES": tunables}, GLIBC, "madvise") is None


@pytest.mark.parametrize("libc, mode", [(("glibc", "2.34"), "madvise"), (("", ""), "madvise"),
                                        (("musl", "1.2"), "madvise"), (GLIBC, "always"), (GLIBC, "never"),
                                        (GLIBC, None)])
def test_nothing_to_gain_means_no_restart(libc, mode):
    assert tunables_with_huge_pages({}, libc, mode) is None


def test_the_environment_switch_turns_the_restart_off():
    assert tunables_with_huge_pages({"DEFT_JAX_HUGE_PAGES": "off"}, GLIBC, "madvise") is None


def test_the_kernel_mode_is_the_bracketed_word(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert transparent_huge_page_mode(path) == "madvise"
    assert transparent_huge_page_mode(tmp_path / "absent") is None


@pytest.mark.slow
def test_the_restart_runs_the_same_command_once_with_the_tunable():
    if tunables_with_huge_pages({}, platform.libc_ver(), transparent_huge_page_mode()) is None:
        pytest.skip("this machine gains nothing from the restart (not glibc >= 2.35 with madvise huge pages)")
    code = ("import os\nfrom deft_jax.runtime import huge_pages\nprint('start', flush=True)\n"
            "huge_pages.restart_with_huge_pages()\nprint(os.environ['GLIBC_TUNABLES'])\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", huge_pages.ENV)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["start", "start", "glibc.malloc.hugetlb=1"]


@pytest.mark.slow
def test_huge_pages_change_no_number_a_training_step_computes():
    code = ("import hashlib\nimport jax, jax.numpy as jnp, numpy as np, optax\n"
            "from deft_jax.models.registry import build_model\n"
            "spec = build_model('resnet20', 10, weights='none', input_size=32)\n"
            "v = spec.init(0)\nrng = np.random.default_rng(0)\n"
            "x = jnp.asarray(rng.standard_normal((64, 32, 32, 3)), jnp.float32)\n"
            "y = jnp.asarray(rng.integers(0, 10, 64))\n"
            "def loss(p):\n"
            "    logits, _ = spec.net.apply({'params': p, 'batch_stats': v['batch_stats']}, x, train=True,\n"
            "                               mutable=['batch_stats'])\n"
            "    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()\n"
            "value, grads = jax.jit(jax.value_and_grad(loss))(v['params'])\n"
            "leaves = [np.asarray(a) for a in jax.tree_util.tree_leaves((value, grads))]\n"
            "print(hashlib.sha256(b''.join(a.tobytes() for a in leaves)).hexdigest())\n")
    digests = {}
    for setting in ("0", "1"):
        env = dict(os.environ, GLIBC_TUNABLES=f"glibc.malloc.hugetlb={setting}", DEFT_JAX_COMPILE_CACHE="off")
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        digests[setting] = out.stdout.strip().splitlines()[-1]
    assert digests["0"] == digests["1"]
