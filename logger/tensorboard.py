"""TensorBoard writers of a run: one TensorBoard run per split inside the run folder, and the run folder itself.

    <run_dir>/           run-level data: the HPARAMS session, the config text, learning rates and schedules
                         (when they change) and the best monitored value
    <run_dir>/train/     per-epoch training means ("epoch/<metric>", "epoch/elbo_per_point" for a mean per point,
                         image or frame; "step/<metric>" with trainer.log_steps)
    <run_dir>/val/       the same tags on the validation split, and the figures
    <run_dir>/test/      test.py: the same tags at the evaluated checkpoint's step, and its figures

Train, validation and test share tags, so TensorBoard overlays them in one chart; the run names
(<name>/<MMDD-HHMMSS>/<split>) end in the split. The run folder also holds the run's HPARAMS entry (its session
and the table's definition: logger.hparams), whose metrics are read from the test run below it (group "test")
and from the run folder itself (best/<monitor>). Disabled writers (tensorboard off, or
not rank 0) accept the calls the framework makes and do nothing.
"""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

from logger.hparams import HparamsEntry, metric_display_name
from utils.errors import OutputWriteError


#: the logged values that are means per point, image or frame (not rates, counts or per-sequence totals)
PER_UNIT = re.compile(r"loss|elbo|elbo_median|elbo_worst|recon|iw_nll|kl(_\w+)?")


def curve_tag(name: str, unit: str) -> str:
    """The tag of a per-epoch (and test) value: epoch/<name>, with the model's unit where the value is a mean
    per point, image or frame (epoch/elbo_per_point), so that only like values share a chart."""
    return f"epoch/{name}_per_{unit}" if PER_UNIT.fullmatch(name) else f"epoch/{name}"


def _protobuf_value(value: bool | float | str) -> Any:
    """An HPARAMS value as the google.protobuf.Value a session records."""
    from google.protobuf import struct_pb2

    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    return struct_pb2.Value(number_value=value) if isinstance(value, float) else struct_pb2.Value(string_value=value)


class _NullWriter:
    """A disabled split: the SummaryWriter methods the framework calls, doing nothing."""

    def add_scalar(self, tag: str, value: Any, global_step: int | None = None) -> None:
        pass

    def add_text(self, tag: str, text: str, global_step: int | None = None) -> None:
        pass

    def add_histogram(self, tag: str, values: Any, global_step: int | None = None) -> None:
        pass

    def add_image(self, tag: str, image: Any, global_step: int | None = None, dataformats: str = "CHW") -> None:
        pass

    def close(self) -> None:
        pass


_previous_excepthook = threading.excepthook


def _quiet_event_writer_errors(args: threading.ExceptHookArgs) -> None:
    """TensorBoard's writer thread re-raises its OSError on the main thread at the next call (there
    it becomes one OutputWriteError line); do not also print it as a thread traceback."""
    if not (isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread"):
        _previous_excepthook(args)


def _install_quiet_excepthook() -> None:
    """Put `_quiet_event_writer_errors` in front of `threading.excepthook` (once: a no-op while it is there)."""
    global _previous_excepthook
    if threading.excepthook is not _quiet_event_writer_errors:
        _previous_excepthook = threading.excepthook
        threading.excepthook = _quiet_event_writer_errors


class _GuardedWriter:
    """A SummaryWriter of `log_dir` whose failed writes (a full disk, a vanished folder) raise
    OutputWriteError naming the folder. TensorBoard writes on a background thread and re-raises
    its error at the next call, so the error may surface one call late."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        _install_quiet_excepthook()
        try:
            self._writer = SummaryWriter(str(log_dir))
        except OSError as err:
            raise OutputWriteError(log_dir, err) from None

    def __getattr__(self, name: str):
        method = getattr(self._writer, name)

        def guarded(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except OSError as err:
                raise OutputWriteError(self.log_dir, err) from None

        return guarded


class TensorboardWriter:
    """SummaryWriters of `run_dir` (attribute `run`) and of its split folders (`train`, `val`, `test`) for the
    `splits` asked for; the others are disabled."""

    SPLITS = ("train", "val", "test")

    def __init__(self, run_dir: Path | None, enabled: bool, splits: tuple[str, ...] = ("run", "train", "val")):
        self.folder = Path(run_dir) if enabled and run_dir is not None else None
        for split in ("run", *self.SPLITS):
            on = self.folder is not None and split in splits
            folder = self.folder if split == "run" else self.folder / split if self.folder else None
            setattr(self, split, _GuardedWriter(folder) if on else _NullWriter())

    def write_hparams(self, entry: HparamsEntry) -> None:
        """Record this run in TensorBoard's HPARAMS table, in the run-level writer: the table's definition (its
        columns and metrics, as logger.hparams describes) and this run's session. Runs of one config or one sweep
        write the same definition, so it does not matter which one TensorBoard reads."""
        if self.folder is None:
            return
        from tensorboard.compat.proto import summary_pb2
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

        types = {bool: api_pb2.DATA_TYPE_BOOL, float: api_pb2.DATA_TYPE_FLOAT64, str: api_pb2.DATA_TYPE_STRING}
        experiment = api_pb2.Experiment(time_created_secs=time.time())
        for name, value in entry.columns.items():
            column = experiment.hparam_infos.add(name=name, type=types[type(value)], differs=name in entry.lead)
            if isinstance(value, bool):
                column.domain_discrete.extend([False, True])
            elif name in entry.domains:
                column.domain_discrete.extend(entry.domains[name])
        for group, tag in entry.metrics:
            experiment.metric_infos.add(name=api_pb2.MetricName(group=group, tag=tag),
                                        display_name=metric_display_name(group, tag))
        session = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
        for name, value in entry.columns.items():
            session.hparams[name].CopyFrom(_protobuf_value(value))
        records = {metadata.EXPERIMENT_TAG: plugin_data_pb2.HParamsPluginData(experiment=experiment),
                   metadata.SESSION_START_INFO_TAG: plugin_data_pb2.HParamsPluginData(session_start_info=session),
                   metadata.SESSION_END_INFO_TAG: plugin_data_pb2.HParamsPluginData(
                       session_end_info=plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS))}
        writer = self.run._get_file_writer()
        for tag, record in records.items():
            summary = summary_pb2.Summary()
            summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(record), tensor=metadata.NULL_TENSOR)
            writer.add_summary(summary)

    def close(self) -> None:
        for split in ("run", *self.SPLITS):
            getattr(self, split).close()
