"""`dispatchq web` in a real browser (Debian's headless Chromium through chromedriver),
against a real stack: redis-server, nomadsim running mock_driver children, a worker and a
tracker and a standby, a notifier posting to a receiver in this process. A batch is watched
to its end on its page (counts, run-time histogram, its completion event and webhook), a
failure opened (its task's exit code and events), and "Retry failed" clicked without the
token (nothing changes) and with it (exactly the failed items again); a batch cancelled
with its dispatched children stopped; the queue's backlog chart and the fleet read.
Screenshots of the pages are saved under the test's temporary directory (and, with
DISPATCHQ_SCREENSHOTS=DIR, there too)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from dispatchq.devstack.nomadsim_process import NomadSimProcess
from dispatchq.devstack.notifier_process import NotifierProcess
from dispatchq.devstack.tracker_process import TrackerProcess
from dispatchq.devstack.web_process import WebProcess
from dispatchq.store import dlq
from dispatchq.store.backlog import history
from dispatchq.store.messages import celery_message
from tests.support.faults import Dispatches
from tests.support.nomad_jobs import FAST_SIM, mock_encode_job, register
from tests.support.requests import message_body
from tests.support.stack import QUEUE, Stack

pytestmark = pytest.mark.integration

TOKEN = "web-token-5e1d"
ITEMS = 300


@pytest.fixture(scope="module")
def sim() -> Iterator[NomadSimProcess]:
    with NomadSimProcess(args=FAST_SIM) as process:
        register(process.address, mock_encode_job("enc"))
        yield process


class Hooks:
    """A webhook receiver on 127.0.0.1: answers 200, keeps the event IDs it was sent."""

    def __init__(self) -> None:
        self.received: list[str] = []
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                hooks.received.append(self.headers["X-Dispatchq-Event-Id"])
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def hooks() -> Iterator[Hooks]:
    receiver = Hooks()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture(scope="module")
def dashboard(stack: Stack, hooks: Hooks) -> Iterator[str]:
    """A worker, two trackers (a leader, a standby), a notifier and `dispatchq web`
    (actions on) over the stack."""
    env = {**stack.env, "DISPATCHQ_WEB_TOKEN": TOKEN}
    notify = {**stack.env, "DISPATCHQ_NOTIFY_HOSTS": hooks.url.split("/")[2],
              "DISPATCHQ_NOTIFY_SECRET": "s"}  # fmt: skip
    logs = stack.log_dir
    with stack.worker("web-w1"), TrackerProcess(env=stack.env, log_path=logs / "web-t1.log"), \
            TrackerProcess(env=stack.env, log_path=logs / "web-t2.log"), \
            NotifierProcess(env=notify, log_path=logs / "web-n.log"), \
            WebProcess(env=env, log_path=logs / "web.log") as web:  # fmt: skip
        yield web.url.rstrip("/")


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1280,900"):  # fmt: skip
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    service = Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    yield driver
    driver.quit()


def _until(check: Callable[[], Any], what: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _counts(driver: webdriver.Chrome) -> dict[str, int]:
    """The counts the page shows, read in one step (htmx replaces them every second)."""
    shown: dict[str, str] = driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('[data-count]')]"
        ".map(e => [e.dataset.count, e.textContent]))"
    )
    return {name: int(text) for name, text in shown.items()}


def _notice(driver: webdriver.Chrome, start: str, what: str) -> str:
    """The notice of the page an action led to, once it starts with `start` (the page
    before it may still be shown, or go stale under the lookup)."""

    def check() -> str:
        try:
            found = driver.find_elements(By.ID, "notice")
            text = found[0].text if found else ""
        except StaleElementReferenceException:
            return ""
        return text if text.startswith(start) else ""

    return str(_until(check, what))


def _shot(driver: webdriver.Chrome, where: Path, name: str) -> None:
    driver.save_screenshot(str(where / f"{name}.png"))
    extra = os.environ.get("DISPATCHQ_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(extra) / f"{name}.png"))


def _histogram(driver: webdriver.Chrome) -> list[int]:
    shown: list[str] = driver.execute_script(
        "return [...document.querySelectorAll('[data-bucket]')].map(e => e.textContent)"
    )
    return [int(text or 0) for text in shown]


def test_a_batch_watched_to_its_end_a_failure_opened_and_retried(
    stack: Stack, dashboard: str, hooks: Hooks, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    items = [{"meta": {"exit_code": "3" if n % 10 == 0 else "0",
                       "run_for": f"{200 + (n * 37) % 800}s"}} for n in range(ITEMS)]  # fmt: skip
    with stack.producer() as producer:
        batch = producer.dispatch_batch("enc", items, until="finished", preflight=False,
                                        notify_url=hooks.url)  # fmt: skip
        browser.get(f"{dashboard}/batches/{batch}")
        seen = [_counts(browser)["done"]]

        def finished() -> bool:
            """Whether the page says finished; the counts it shows until then, kept."""
            if browser.find_elements(By.CSS_SELECTOR, "[data-state=finished]"):
                return True
            seen.append(_counts(browser).get("done", -1))
            return False

        # the counts move on the page by themselves (htmx), up to the end
        _until(finished, "the page to say finished")
        shown = _counts(browser)
        status = producer.batch_status(batch)
        assert status is not None
        truth = status.to_json()
        assert {k: shown[k] for k in ("done", "total", "succeeded", "failed", "errors")} == {
            k: truth[k] for k in ("done", "total", "succeeded", "failed", "errors")}  # fmt: skip
        assert (shown["succeeded"], shown["failed"]) == (ITEMS * 9 // 10, ITEMS // 10)
        assert len(set(seen)) > 1, seen  # it moved while watched, not only at the end
        histogram = _histogram(browser)  # each child's run, once: every item ran once
        assert sum(histogram) == ITEMS and histogram == truth["run_times"], histogram
        assert f"batch:{batch}" in browser.find_element(By.ID, "completion").text

        def delivered() -> bool:
            browser.refresh()
            return bool(browser.find_elements(By.CSS_SELECTOR, "[data-webhook=delivered]"))

        _until(delivered, "the page to say the webhook was delivered")
        assert f"batch:{batch}" in hooks.received
        _shot(browser, tmp_path, "batch")

        # a failure opened: its task's exit code
        browser.find_element(By.CSS_SELECTOR, "table.failures a").click()
        error = _until(lambda: browser.find_elements(By.ID, "error"), "the request page")[0].text
        assert "exit" in error and "3" in error, error
        assert browser.find_element(By.ID, "exit-code").text == "2"
        allocations = browser.find_elements(By.CSS_SELECTOR, "#allocations tbody tr")
        task_exit_codes = [row.find_elements(By.TAG_NAME, "td")[6].text for row in allocations]
        assert "3" in task_exit_codes, task_exit_codes  # the task's own exit code
        events = browser.find_element(By.ID, "task-events").text  # read from Nomad now
        assert "Started" in events and "Terminated" in events, events
        _shot(browser, tmp_path, "request")
        page, child = browser.current_url, browser.find_element(By.ID, "child").text
        search = browser.find_element(By.NAME, "q")  # by the child's job ID, from Nomad
        search.send_keys(child)
        search.submit()
        _until(lambda: browser.current_url == page, "the search to open the request")

        # "Retry failed" without the token: refused, nothing dispatched
        before = Dispatches.read(stack.sim.address)
        browser.get(f"{dashboard}/batches/{batch}")
        browser.find_element(By.ID, "retry-failed").click()
        problem = _until(lambda: browser.find_elements(By.ID, "problem"), "the refusal")
        assert "wrong or missing token" in problem[0].text
        after = Dispatches.read(stack.sim.address)
        assert sum(after.children.values()) == sum(before.children.values())
        assert producer.batch_status(batch).retries == 0  # type: ignore[union-attr]

        # with it: exactly the failed items again
        browser.get(f"{dashboard}/batches/{batch}")
        form = browser.find_element(By.CSS_SELECTOR, "form[action$='/retry']")
        form.find_element(By.NAME, "token").send_keys(TOKEN)
        form.find_element(By.ID, "retry-failed").click()
        notice = _notice(browser, "retrying", "the page after retry")
        assert notice == f"retrying {ITEMS // 10} item(s)"
        _until(lambda: len(Dispatches.read(stack.sim.address).children)
               == len(before.children) + ITEMS // 10, "the retries to be dispatched")  # fmt: skip
        again = Dispatches.read(stack.sim.address).children
        new = set(again) - set(before.children)
        assert all(token.endswith("~2") for token in new), sorted(new)[:3]

        browser.get(dashboard)
        assert batch in browser.find_element(By.CSS_SELECTOR, "table.batches").text
        _shot(browser, tmp_path, "batches")
        _until(lambda: len(history(producer.redis, QUEUE)) >= 2, "two backlog samples", 30)
    browser.get(f"{dashboard}/queue")
    assert browser.find_elements(By.CSS_SELECTOR, "#backlog-chart polyline")
    _shot(browser, tmp_path, "queue")
    browser.get(f"{dashboard}/fleet")
    fleet = browser.find_element(By.ID, "fleet").text
    assert "web-w1@" in fleet
    roles = [row.find_elements(By.TAG_NAME, "td")[1].text
             for row in browser.find_elements(By.CSS_SELECTOR, "tr.tracker")]  # fmt: skip
    assert sorted(roles) == ["leader", "standby"], roles
    assert browser.find_elements(By.CSS_SELECTOR, "tr.notifier")
    _shot(browser, tmp_path, "fleet")


def test_a_batch_cancelled_with_its_dispatched_children_stopped(
    stack: Stack, dashboard: str, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    items = [{"meta": {"exit_code": "0", "run_for": "600000s"}} for _ in range(20)]  # 10 min
    with stack.producer() as producer:
        batch = producer.dispatch_batch("enc", items, until="finished", preflight=False)

        def all_running() -> bool:
            status = producer.batch_status(batch)
            return status is not None and status.running == len(items)

        _until(all_running, "every child to run")
        browser.get(f"{dashboard}/batches/{batch}")
        form = browser.find_element(By.CSS_SELECTOR, "form[action$='/cancel']")
        form.find_element(By.NAME, "token").send_keys(TOKEN)
        form.find_element(By.ID, "stop-dispatched").click()
        form.find_element(By.ID, "cancel").click()
        notice = _notice(browser, "cancelled", "the page after cancel")
        assert "stopped 20 dispatched child job(s)" in notice, notice
        _until(lambda: browser.find_elements(By.CSS_SELECTOR, "[data-state=finished]"),
               "the stopped children to end the batch")  # fmt: skip
        status = producer.batch_status(batch)
        assert status is not None and status.state == "cancelled" and status.done == 20
        assert status.exit_codes.get(0, 0) == 0  # none ran to its end
        _shot(browser, tmp_path, "batch-cancelled")


def test_dead_letters_replayed_and_purged_with_the_token_only(
    stack: Stack, dashboard: str, browser: webdriver.Chrome, redis_client: redis.Redis
) -> None:
    body = message_body("r-replayed", "enc", meta={"exit_code": "0", "run_for": "100s"})
    for kind, rid in (("store", "r-replayed"), ("malformed", "r-bad")):
        dlq.append(redis_client, dlq.DeadLetter(reason="for the test", kind=kind, task_id=rid,
                                                queue=QUEUE, message=celery_message(body, QUEUE)))
    browser.get(f"{dashboard}/dead-letters")
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.dead-letters tbody tr")) == 2
    [replay] = browser.find_elements(By.CSS_SELECTOR, "form[action$='/replay']")  # "store" only
    replay.find_element(By.CLASS_NAME, "replay").click()  # no token
    _until(lambda: browser.find_elements(By.ID, "problem"), "the refusal")
    assert len(dlq.entries(redis_client)) == 2
    browser.get(f"{dashboard}/dead-letters")
    replay = browser.find_element(By.CSS_SELECTOR, "form[action$='/replay']")
    replay.find_element(By.NAME, "token").send_keys(TOKEN)
    replay.find_element(By.CLASS_NAME, "replay").click()
    _notice(browser, "replayed r-replayed", "the replay")
    with stack.producer() as producer:
        assert producer.wait(["r-replayed"], timeout=60)["r-replayed"].done
    purge = browser.find_element(By.CSS_SELECTOR, "form[action$='/purge']")
    purge.find_element(By.NAME, "token").send_keys(TOKEN)
    purge.find_element(By.ID, "purge").click()
    assert _notice(browser, "purged", "the purge") == "purged 1 dead letter(s)"
    assert dlq.entries(redis_client) == []

