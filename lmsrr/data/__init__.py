"""Continual streams: a registry of datasets split into tasks, torch and DALI loaders, augmentation."""
from lmsrr.data.registry import available_streams, build_stream, check_stream_name, register_dataset
from lmsrr.data.splits import TaskData
from lmsrr.data.stream import ContinualStream

# Explicit imports register the built-in streams.
from lmsrr.data import digits as _digits  # noqa: E402,F401
from lmsrr.data import cifar as _cifar  # noqa: E402,F401
from lmsrr.data import files as _files  # noqa: E402,F401
from lmsrr.data import folder as _folder  # noqa: E402,F401
from lmsrr.data import mnist as _mnist  # noqa: E402,F401
from lmsrr.data import tinyimagenet as _tinyimagenet  # noqa: E402,F401

__all__ = ["ContinualStream", "TaskData", "available_streams", "build_stream", "check_stream_name",
           "register_dataset"]
