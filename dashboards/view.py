"""What a dashboard view declares: the section it fills (key, title, note), the analysis table it draws and the
figure it draws it with. The report reads nothing else, so a view is one module and one entry in
``registry.VIEWS`` (docs/adding-an-analysis-or-view.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go

from mmchar.store import Run


@dataclass(frozen=True)
class View:
    """One section of the page.

    Attributes:
        key: the section's id (``fig-<key>`` in the page, ``<key>.png`` for ``--png``).
        title: the section heading.
        note: the one line under the heading: what the figure shows and from which pass.
        table: a name in ``mmchar.analysis.TABLES`` (the table `mmchar study` writes as CSV), or, for a table the
            study does not write (one step's kernels, the points behind a fit), the function of the runs that
            computes it.
        figure: the table to the figure.
        marked: join each run's marks on ``run_id`` first (its label over the whole page, the noise guard's
            verdict and reasons, its device type), for views that hatch noisy runs or name the busy kind.
        require: columns every drawn row has a value in (rows without are left out before the emptiness check: a
            view with nothing to draw is left off the page).
    """

    key: str
    title: str
    note: str
    table: str | Callable[[Sequence[Run]], pd.DataFrame]
    figure: Callable[[pd.DataFrame], go.Figure]
    marked: bool = False
    require: tuple[str, ...] = ()
