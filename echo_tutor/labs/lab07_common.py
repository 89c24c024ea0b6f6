"""Lab 07: what the checkers of its three exercises share (see :mod:`echo_tutor.labs.lab07`, which re-exports
it): the leading shapes the lab's later cells call the exercises with, and the loop that runs a check on every
leading shape and names the first failure."""

from typing import Callable

from . import ExerciseError, NotAttempted, batch_dims_hint

__all__ = ["LATER_GRAM_LEADS", "LATER_SM_LEADS", "_over_leads"]

# The leading shapes the lab's later cells call the exercises with: chunk_gram on [N = 3, T, r] (section 2);
# chunk_gram_triton on section 1's [B = 2, H = 3, T = 53, r] (a permuted, strided view); sherman_morrison on
# the decode cell's [B = 1, H = 2, r, r].
LATER_GRAM_LEADS = ((3,), (2, 3))
LATER_SM_LEADS = ((1, 2),)


def _over_leads(cases, run_one: Callable, hint_of: Callable, seed: int) -> None:
    """Run ``run_one(case) -> (ok, detail)`` for every ``case = (leading shape, variant)``; refuse with the first
    failure's detail and :func:`batch_dims_hint` when that leading shape failed where others passed, else
    ``hint_of(case)``."""
    passed_leads, failures = [], []
    for case in cases:
        try:
            ok, detail = run_one(case)
        except NotAttempted:
            raise
        except ExerciseError as e:
            ok, detail = False, str(e)
        if ok:
            passed_leads.append(case[0])
        else:
            failures.append((case, detail))
    if not failures:
        return
    case, detail = failures[0]
    lead = case[0]
    hint = "" if lead in passed_leads else batch_dims_hint(lead, list(dict.fromkeys(passed_leads)))
    raise ExerciseError(f"{detail} (seed {seed}).{hint or hint_of(case)}")
