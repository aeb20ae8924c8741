"""How ModelPact logs: one line per event, through the root logger's one handler."""

from __future__ import annotations

import logging


class RefusalsWithoutTraceback(logging.Filter):
    """A page refused (403) or not found (404) is the app doing its job: logged as one line, without
    the PermissionDenied or Http404 traceback Django attaches to it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "status_code", None) in (403, 404):
            record.exc_info = None
            record.exc_text = None
        return True
