"""The run directory of a ``pynodeta`` command: resuming into it, locking it, cleaning it.

* Resume: ``fit --ckpt_path <run>/checkpoints/X.ckpt`` continues in ``<run>`` (the logger's
  ``save_dir``/``name``/``version`` are pinned to it), so metrics, config and best-checkpoint
  tracking stay in one folder. ``--ckpt_path last`` means the newest ``last.ckpt`` under the
  logger's ``<save_dir>/<name>/``; with none there the command is refused (Lightning alone would
  silently train from scratch).
* Lock: a run holds ``<run>.lock`` (beside the folder, so loggers still see an empty new folder),
  an advisory ``flock`` that the operating system drops when the process dies, and holding its pid
  for the message. A second live run on the same folder is refused; a dead run's lock is taken over.
* New or resumed: ``fit`` into a folder that already holds another run's files (an explicit
  ``--trainer.logger.init_args.version`` naming a used folder) is refused unless it resumes from a
  checkpoint inside that folder; two runs' metrics and checkpoints would otherwise mix.
* Clean: leftover ``.<name>.ckpt.*.tmp`` and ``.phema-<step>.pt.*.tmp`` files (a run killed while
  :func:`pynodeta._atomic.atomic_torch_save` wrote a checkpoint or a power-EMA snapshot) are removed
  once the lock is held, when no writer of this run can be alive.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

__all__ = ["RunDirectoryError", "RunDirLock", "remove_stale_tmp_files", "remove_stale_run_tmp_files",
           "newest_last_checkpoint", "run_dir_of_checkpoint", "keep_csv_metrics", "check_fit_run_dir"]


class RunDirectoryError(Exception):
    """A run directory that cannot be used: held by another live run, or no checkpoint to resume."""


class RunDirLock:
    """Exclusive hold of a run directory by this process, via the lock file ``<run_dir>.lock``."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir.with_name(self.run_dir.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RunDirectoryError` naming the live run holding it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            locked = _try_lock(fd)
            if not locked or _same_file(fd, self.path):
                break
            os.close(fd)  # we locked a file its holder deleted on release: retry on the current one
        if not locked:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirectoryError(
                f"run directory {str(self.run_dir)!r} is in use by another live run (pid {holder}, lock file "
                f"{str(self.path)!r}); two runs in one folder overwrite each other's config, metrics and "
                f"checkpoints. Wait for it to finish, or pick another folder, e.g. "
                f"--trainer.logger.init_args.version <new name>")
        os.ftruncate(fd, 0)  # a dead run's pid may be there: the lock is ours now
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        self.run_dir.mkdir(parents=True, exist_ok=True)  # so the next run's version counter skips it

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # unlink first: no one can lock a file we then delete
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: exclusive byte-range lock instead
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


# what pynodeta._atomic's writes leave when the process dies mid-write: ".<target name>.<random>.tmp"
STALE_TMP_PATTERNS = (".*.ckpt.*.tmp", ".phema-*.pt.*.tmp")  # checkpoints, power-EMA snapshots
SNAPSHOT_FOLDER = "phema"  # EMACallback's default snapshot folder inside the run folder


def remove_stale_tmp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed checkpoint or snapshot write left in ``folder``; returns them.

    Call it only while holding the run-folder lock: a live writer's temporary file matches too.
    """
    folder = Path(folder)
    stale = sorted({p for pattern in STALE_TMP_PATTERNS for p in folder.glob(pattern)}) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def remove_stale_run_tmp_files(run_dir: str | os.PathLike) -> list[Path]:
    """``remove_stale_tmp_files`` for a run folder's ``checkpoints/`` and ``phema/`` (the snapshots that
    ``EMACallback`` writes there by default); only under the run-folder lock, as it."""
    run_dir = Path(run_dir)
    return remove_stale_tmp_files(run_dir / "checkpoints") + remove_stale_tmp_files(run_dir / SNAPSHOT_FOLDER)


def check_fit_run_dir(run_dir: str | os.PathLike, ckpt_path: str | os.PathLike | None) -> None:
    """Refuse a ``fit`` into ``run_dir`` when it holds files and ``ckpt_path`` is not a checkpoint inside it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return  # a new folder, or one a killed run only created
    if ckpt_path is not None and Path(ckpt_path).is_file() and run_dir.resolve() in Path(ckpt_path).resolve().parents:
        return  # resuming this folder's own run
    names = sorted(p.name for p in run_dir.iterdir())
    found = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    raise RunDirectoryError(
        f"run directory {str(run_dir)!r} already holds another run's files ({found}); a new fit there would mix "
        f"their metrics and checkpoints. Pick a new folder, e.g. --trainer.logger.init_args.version <new name>, or "
        f"resume that run with --ckpt_path {run_dir / 'checkpoints' / 'last.ckpt'}")


def run_dir_of_checkpoint(checkpoint: str | os.PathLike) -> Path | None:
    """``<run>`` for a checkpoint at ``<run>/checkpoints/X.ckpt`` (the layout loggers give), else None."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None


def newest_last_checkpoint(root: str | os.PathLike) -> Path:
    """The most recently written ``<root>/*/checkpoints/last.ckpt`` (``--ckpt_path last``)."""
    found = [p for p in Path(root).glob("*/checkpoints/last.ckpt") if p.is_file()]
    if not found:
        raise RunDirectoryError(
            f"--ckpt_path last: no last.ckpt under {str(root)!r}/*/checkpoints/, so there is nothing to resume "
            f"(Lightning would silently start from scratch). Pass the checkpoint file, e.g. --ckpt_path "
            f"{root}/version_0/checkpoints/epoch=...ckpt, or save one with ModelCheckpoint(save_last=True)")
    return max(found, key=lambda p: p.stat().st_mtime_ns)


def keep_csv_metrics(logger, log_dir: str | os.PathLike, completed_epochs: int) -> None:
    """Keep a resumed run's ``metrics.csv`` rows of its first ``completed_epochs`` epochs.

    Lightning's CSV writer deletes ``metrics.csv`` of a non-empty folder when it starts; the rows
    are put back (later epochs, which the resumed run logs again, are dropped), and the writer
    appends after them. Loggers other than a CSV writer are left alone.
    """
    path = Path(log_dir) / "metrics.csv"
    text = path.read_text() if path.is_file() else None
    writer = logger.experiment  # created now: it deletes the old file
    if text is None or not hasattr(writer, "metrics_keys"):
        return
    rows = list(csv.DictReader(io.StringIO(text)))
    header = list(rows[0].keys()) if rows else []
    kept = [r for r in rows if not (r.get("epoch") or "").isdigit() or int(r["epoch"]) < completed_epochs]
    out = io.StringIO()
    table = csv.DictWriter(out, fieldnames=header)
    table.writeheader()
    table.writerows(kept)
    path.write_text(out.getvalue())
    writer.metrics_keys = sorted(header)  # the writer appends with these columns, rewriting on new ones
