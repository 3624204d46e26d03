"""The console in a real browser: Debian's Chromium, headless, driven by Playwright.

The whole stack runs in this event loop (broker from the session, both APIs
under uvicorn, the projector); Chromium opens the query API's `/console`,
signs in with an admin key, follows a live tail while commands are sent,
opens the stream in the explorer, sees a poison record dead-lettered and
re-drives it, then starts a rebuild and watches it reach the swap. Each step
leaves a screenshot in `tests/results/console/`.

The projector runs the accounts projection as deployed before its v1 -> v2
upcasters existed, so a v1 record is poison to it; the query API serves the
fixed declaration, so a re-drive from the page applies the record.

Playwright's own browser downloads are never used: `scripts/ensure-chromium`
installs Debian's `chromium`, and the test points Playwright at it.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import httpx
import orjson
import pytest

from eventfold.auth import new_key
from eventfold.kafka import create_topics, dlq_topic
from eventfold.settings import AuthSettings
from examples.bank.contracts import ACCOUNT
from examples.bank.projection import ACCOUNTS
from tests.helpers import uid, wait_until
from tests.support.live import query_server, serving
from tests.support.projection import account_events, fast_projector, produce_envelopes, running_projector

playwright_api = pytest.importorskip("playwright.async_api")

SHOTS = Path(__file__).resolve().parents[1] / "results" / "console"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WITHOUT_UPCASTERS = dataclasses.replace(ACCOUNTS, contract=dataclasses.replace(ACCOUNT, upcasters={}))


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no chromium: run scripts/ensure-chromium")
async def test_console_in_a_browser(make_settings) -> None:
    from command_api.bootstrap import create_app as command_app
    from tests.support.bank import default_aggregates

    expect = playwright_api.expect
    token, entry = new_key("operator", ["admin"])
    settings = make_settings(
        auth=AuthSettings(api_keys=orjson.dumps([entry.model_dump(mode="json")]).decode()),
        projector=fast_projector(),
    )
    topic = settings.kafka.topic("account")
    await create_topics(settings.kafka, [topic, dlq_topic(topic)])
    SHOTS.mkdir(parents=True, exist_ok=True)
    auth = {"Authorization": f"Bearer {token}"}
    sid = uid("acc")

    async with (
        serving(command_app(settings, default_aggregates())) as command_url,
        query_server(settings) as (query_url, _app),
        running_projector(settings, [WITHOUT_UPCASTERS]),
        httpx.AsyncClient(base_url=command_url, headers=auth, timeout=30) as commands,
        httpx.AsyncClient(base_url=query_url, headers=auth, timeout=30) as query,
        playwright_api.async_playwright() as pw,
    ):
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(20_000)

            # Sign in: the key goes to sessionStorage, never back into the page.
            await page.goto(f"{query_url}/console")
            await page.get_by_label("API key").fill(token)
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.locator("#who")).to_contain_text("operator (admin)")
            await expect(page.locator('.card[data-name="accounts"]')).to_be_visible()
            assert token not in await page.content()
            await page.screenshot(path=SHOTS / "01-signed-in-status.png", full_page=True)

            # Live tail of the account topic, filtered to one stream, then commands sent.
            await page.locator("#tail-type").select_option("account")
            await page.locator("#tail-id").fill(sid)
            await page.get_by_role("button", name="Start").click()
            await expect(page.locator("#tail-state")).to_contain_text("Listening on")
            for body in (
                {"type": "OpenAccount", "data": {"owner": "Ada"}},
                {"type": "Deposit", "data": {"amount": 120, "reference": "salary"}},
            ):
                sent = await commands.post(f"/commands/account/{sid}", json=body)
                assert sent.status_code == 200, sent.text
            rows = page.locator(f'#tail-table tbody tr[data-stream="{sid}"]')
            await expect(rows).to_have_count(2)
            await expect(rows.first).to_contain_text("Deposited")
            await page.locator("#tail").screenshot(path=SHOTS / "02-live-tail.png")

            # The stream explorer, opened from the tail, once the read model has the deposit.
            position = sent.json()["position"]
            got = await query.get(f"/views/accounts/{sid}", params={"wait_for": position, "wait_timeout": 20})
            assert got.status_code == 200, got.text
            await rows.first.get_by_role("button").click()
            await expect(page.locator("[data-role=stream-events] tbody tr")).to_have_count(2)
            await expect(page.locator("[data-role=write-side]")).to_contain_text("Version 2")
            await expect(page.locator('[data-role=document][data-projection="accounts"]')).to_contain_text(
                '"balance": 120'
            )
            await page.locator("#streams").screenshot(path=SHOTS / "03-stream-explorer.png")

            # A v1 deposit is poison to the running projector: it is dead-lettered.
            poison = account_events(1, 2, seed=int(sid[-6:], 16))
            await produce_envelopes(settings.kafka, topic, poison)

            async def dead_lettered() -> bool:
                listed = (await query.get("/console/api/dead-letters")).json()
                return bool(listed["total"])

            await wait_until(dead_lettered, timeout=30, what="the poison record to be dead-lettered")
            await page.get_by_role("button", name="Refresh").click()
            dead = page.locator("#dl-table tbody tr[data-id]")
            await expect(dead).to_have_count(1)
            await expect(dead.first).to_contain_text("unknown_type")
            await dead.first.locator("summary").click()
            await page.locator("#dead-letters").screenshot(path=SHOTS / "04-dead-letter.png")
            await dead.first.get_by_role("button", name="Re-drive").click()
            await expect(page.locator("#notice")).to_contain_text("applied 1")
            await expect(dead).to_have_count(0)
            await page.locator("#dead-letters").screenshot(path=SHOTS / "05-redriven.png")

            # A blue/green rebuild from the page, watched until the new generation is swapped in.
            card = page.locator('.card[data-name="accounts"]')
            listed = (await query.get("/projections")).json()
            now = next(p["generation"] for p in listed["projections"] if p["name"] == "accounts")
            await card.get_by_role("button", name="Rebuild accounts").click()
            await expect(page.locator("#notice")).to_contain_text(f"generation {now + 1}")
            await card.screenshot(path=SHOTS / "06-rebuild-started.png")
            await expect(card.locator("[data-role=rebuild-state]")).to_contain_text(
                f"Swapped in generation {now + 1}", timeout=45_000
            )
            await page.screenshot(path=SHOTS / "07-rebuild-swapped.png", full_page=True)
        finally:
            await browser.close()
