"""The ``pynodeta`` command: ``diagnose`` audits a model, ``plot`` draws a run's training curves,
``sample``/``evaluate`` run a trained diffusion model, ``phema`` reconstructs post-hoc EMA weights;
everything else (fit, validate, test) is training."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "diagnose":
        from pynodeta.diagnose.cli import main as diagnose_main

        return diagnose_main(argv[1:])
    if argv and argv[0] == "plot":
        from pynodeta.train.plots import main as plot_main

        return plot_main(argv[1:])
    if argv and argv[0] in ("sample", "evaluate"):
        from pynodeta.train.sample_cli import evaluate_main, sample_main

        return (sample_main if argv[0] == "sample" else evaluate_main)(argv[1:])
    if argv and argv[0] == "phema":
        from pynodeta.ema.cli import main as phema_main

        return phema_main(argv[1:])
    from pynodeta.train.cli import main as train_main

    return train_main(argv)


if __name__ == "__main__":
    sys.exit(main())
