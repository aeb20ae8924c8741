"""Workers keep their database connection from task to task, and drop one a task left unusable."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from django.db import connection

from config.celery import _database_after_task, _database_before_task

pytestmark = pytest.mark.django_db(transaction=True)


def task(*, eager: bool = False) -> SimpleNamespace:
    return SimpleNamespace(request=SimpleNamespace(is_eager=eager))


def open_connection():
    connection.ensure_connection()
    return connection.connection


def test_a_task_that_succeeded_leaves_the_connection_for_the_next_task():
    raw = open_connection()
    _database_after_task(task=task(), state="SUCCESS")
    _database_before_task(task=task())
    assert connection.connection is raw and not raw.closed


def test_a_task_that_failed_closes_the_connection():
    raw = open_connection()
    _database_after_task(task=task(), state="FAILURE")
    assert connection.connection is None and raw.closed


def test_a_connection_left_inside_a_transaction_is_closed_though_the_task_succeeded():
    # What a time limit leaves when it interrupts a statement: Django still thinks the connection fine.
    raw = open_connection()
    raw.execute("BEGIN")
    _database_after_task(task=task(), state="SUCCESS")
    assert connection.connection is None and raw.closed


def test_a_connection_past_its_max_age_is_replaced_before_the_next_task():
    raw = open_connection()
    connection.close_at = 0  # CONN_MAX_AGE has passed
    _database_before_task(task=task())
    assert connection.connection is None and raw.closed


def test_a_task_run_eagerly_inside_a_request_never_touches_its_connection():
    raw = open_connection()
    _database_after_task(task=task(eager=True), state="FAILURE")
    assert connection.connection is raw and not raw.closed
