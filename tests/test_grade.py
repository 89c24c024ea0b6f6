"""The grading script re-runs the checkers on the learner's own functions: editing a check call away, or
calling the library, does not pass."""

import pytest

pytest.importorskip("nbclient")
jupytext = pytest.importorskip("jupytext")

from echo_tutor.labs.grade import grade  # noqa: E402

NOTEBOOK = '''# %%
from echo_tutor import labs
from echo_tutor.labs import lab00

# %%
def kv_cache_bytes(n_layers, n_kv_heads, head_dim, tokens, dtype_bytes):
    return n_layers * n_kv_heads * head_dim * tokens * dtype_bytes   # forgets the factor 2 (keys and values)


kv_cache_bytes = labs.exercise(kv_cache_bytes, "lab00")
# the learner deleted the check call

# %%
def ska_state_floats(n_heads, r, head_dim):
    from echo_tutor.ska import SpectralKoopmanAttention
    return SpectralKoopmanAttention(n_heads * head_dim, n_heads, r).state_nbytes() // 4   # asks the library


ska_state_floats = labs.exercise(ska_state_floats, "lab00")
lab00.check_ska_state_floats(ska_state_floats)
'''


def test_grade_rechecks_and_refuses_shortcuts(tmp_path):
    path = tmp_path / "student_00.py"
    path.write_text(NOTEBOOK)
    res = grade(str(path), timeout=300)
    assert res["kv_cache_bytes"].startswith("FAIL: kv_cache_bytes: expected")
    assert res["ska_state_floats"].startswith("FAIL: ska_state_floats") and "the answer for you" in res["ska_state_floats"]
