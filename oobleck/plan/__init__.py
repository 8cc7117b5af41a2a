"""``python -m oobleck.plan``: the planner's command line (the code lives in ``oobleck.cli.plan``)."""

__all__: list[str] = []
