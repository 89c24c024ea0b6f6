"""The rubric (echo_tutor.labs.rubric) covers every exercise of every lab, in the labs' order, and sums to 100."""

import pathlib
import re

from echo_tutor.labs.rubric import LAB_EXERCISES, OPEN, RUBRIC, items_of, total_points

NB = pathlib.Path(__file__).resolve().parents[1] / "notebooks"


def test_every_exercise_of_every_lab_has_its_points():
    found = {}
    for src in sorted(NB.glob("[0-9][0-9]_*.py")):
        names = re.findall(r'(\w+) = labs\.exercise\(\1, "(lab\d\d)"\)', src.read_text())
        for name, lab in names:
            found.setdefault(lab, []).append(name)
    assert {k: tuple(v) for k, v in found.items()} == LAB_EXERCISES
    for lab, names in LAB_EXERCISES.items():
        assert [it.key.split(".")[1] for it in items_of(lab)] == list(names)


def test_the_parts_add_up_to_100_and_every_item_is_worth_something():
    assert total_points() == 100
    assert all(it.points > 0 for it in RUBRIC)
    assert set(OPEN) <= {f"{lab}.{n}" for lab, names in LAB_EXERCISES.items() for n in names}
    assert all(it.checked > 0 and it.manual > 0 and it.criteria for it in OPEN.values())


def test_the_rubric_page_states_the_same_weights():
    page = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "instructor" / "rubric.md").read_text()
    auto = round(sum(it.checked for it in RUBRIC if it.key not in OPEN and it.lab), 6)
    assert f"| {auto:g} |" in page
    for key in OPEN:
        assert f"`{key.split('.')[1]}`" in page
