"""Backends that misbehave the way real frameworks do — abort (XLA's CHECK failures), segfault, exit,
hang — for the isolation tests. Test fixtures, never registered: a test names one with a spec
(``--backend hostile_backends:aborting``) from a directory holding a copy of this file.

When it does not misbehave, each computes numpy's float32 conv backward, so its other verdicts
are real ones.
"""

import ctypes
import os
import threading

from difftest.backends import get_backend
from difftest.backends.base import Backend
from difftest.formats import BINARY32
from difftest.geometry import GRADIENTS


def _abort():
    os.abort()


def _segfault():
    ctypes.string_at(0)  # reads address 0: SIGSEGV


def _exit():
    os._exit(3)


def _hang():
    threading.Event().wait()  # forever


def _always(x, w, stride) -> bool:
    return True


def _strided(x, w, stride) -> bool:
    """A "small strided case", as the XLA abort of the issue: any stride but 1."""
    return stride != 1 and tuple(stride) != (1, 1) if isinstance(stride, (tuple, list)) else stride != 1


class Hostile(Backend):
    format = BINARY32

    def __init__(self, name: str, when, act):
        self.name, self.when, self.act = name, when, act
        self.description = f"numpy-float32 that calls {act.__name__} when {when.__name__}"

    def conv2d_backward(self, x, w, d, stride, padding, gradients=GRADIENTS, dilation=1, groups=1):
        if self.when(x, w, stride):
            self.act()
        return get_backend("numpy-float32").conv2d_backward(x, w, d, stride, padding, gradients, dilation, groups)


aborting = Hostile("aborting", _always, _abort)
aborting_strided = Hostile("aborting_strided", _strided, _abort)
segfaulting = Hostile("segfaulting", _always, _segfault)
exiting = Hostile("exiting", _always, _exit)
hanging = Hostile("hanging", _always, _hang)


def loud_abort(x, w, d, stride, padding):
    """A plain function that says why before it aborts, as a CHECK failure does."""
    print("F0000 conv.cc:42] Check failed: stride == 1 (2 vs. 1)", flush=True)
    os.abort()
