"""Predict, then run: the learner commits to a guess in a widget before the figure that answers it.

    guess = labs.Prediction("With K = 2, whose value does the query for key i read back?",
                            ["i - 1", "i", "i + 1", "i + 2"])
    guess.show()                       # a row of buttons and a small figure of the chosen guess
    ...                                # the next cell draws the answer, then:
    guess.reveal("i + 2")              # "You guessed i + 1; the answer is i + 2."

Until the learner picks an option the guess is ``None`` ("no guess yet"), and Run All goes through: the
answer cell says that no guess was made. The figure beside the buttons follows the choice, so the browser
test can drive it like any other control.
"""

from __future__ import annotations

from typing import Sequence

from ..errors import BadArgumentError

__all__ = ["Prediction", "NO_GUESS"]

NO_GUESS = "no guess yet"


class Prediction:
    """A multiple-choice guess with a figure that shows it; ``value`` is the choice or None."""

    def __init__(self, question: str, options: Sequence[str]) -> None:
        if not isinstance(question, str) or not question:
            raise BadArgumentError(f"question must be a non-empty string, got {question!r}")
        opts = [str(o) for o in options]
        if len(opts) < 2 or len(set(opts)) != len(opts) or NO_GUESS in opts:
            raise BadArgumentError(f"options must be at least two distinct labels (not {NO_GUESS!r}), got {options!r}")
        self.question, self.options = question, opts
        self._control = None
        self._figure = None

    @property
    def value(self) -> str | None:
        if self._control is None or self._control.value == NO_GUESS:
            return None
        return self._control.value

    def _draw(self, change=None) -> None:
        chosen = self.value
        with self._figure.batch_update():
            self._figure.data[0].marker.color = ["#2ca02c" if o == chosen else "#d9d9d9" for o in self.options]
            self._figure.layout.title.text = f"your guess: {chosen}" if chosen else "your guess: none yet"

    def show(self) -> None:
        """Display the question, the buttons and the figure of the guess."""
        import ipywidgets as widgets
        import plotly.graph_objects as go
        from IPython.display import display

        self._control = widgets.ToggleButtons(options=[NO_GUESS, *self.options], value=NO_GUESS,
                                              style={"button_width": "auto"})
        self._figure = go.FigureWidget(go.Bar(x=self.options, y=[1] * len(self.options), hoverinfo="x"))
        self._figure.update_layout(height=170, margin=dict(l=20, r=20, t=40, b=30), yaxis_visible=False,
                                   yaxis_range=[0, 1.2], showlegend=False)
        self._draw()
        self._control.observe(self._draw, names="value")
        display(widgets.VBox([widgets.HTML(f"<b>Predict first.</b> {self.question}"), self._control, self._figure]))

    def reveal(self, answer: str) -> str:
        """Print (and return) how the guess compares with ``answer``."""
        if str(answer) not in self.options:
            raise BadArgumentError(f"answer must be one of the options {self.options}, got {answer!r}")
        chosen = self.value
        if chosen is None:
            msg = f"No guess was locked in above; the answer is {answer}."
        elif chosen == str(answer):
            msg = f"You guessed {chosen}: right."
        else:
            msg = f"You guessed {chosen}; the answer is {answer}."
        print(msg)
        return msg
