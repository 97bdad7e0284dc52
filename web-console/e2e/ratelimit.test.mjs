// 429 in the browser: the server limits failed credentials (20 a minute per source address
// and per credential). A stale session cookie past that limit gets 429 with Retry-After: the
// console waits that long before asking again and says so. Runs last (the limit counts
// failures from 127.0.0.1 for a minute; valid credentials are never refused).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { launch, settings, shot } from "./harness.mjs";

const env = settings();
const API = env.WEFT_API_URL;
let browser;

describe("rate limited", () => {
  before(async () => {
    browser = await launch();
  });
  after(async () => browser?.close());

  test("429: the console waits Retry-After before asking again, and says so", async () => {
    const stale = `weft_session=stale-${Date.now()}`;
    let status = 0;
    for (let i = 0; i < 25 && status !== 429; i++) {
      status = (await fetch(`${API}/v1/me`, { headers: { Cookie: stale } })).status;
    }
    assert.equal(status, 429, "the limiter answers 429 after 20 failures");
    const first = await fetch(`${API}/v1/me`, { headers: { Cookie: stale } });
    const retryAfter = Number(first.headers.get("Retry-After"));
    assert.ok(retryAfter >= 1, `Retry-After: ${first.headers.get("Retry-After")}`);

    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    await context.addCookies([{ name: "weft_session", value: stale.split("=")[1], url: API }]);
    const page = await context.newPage();
    const asked = [];
    page.on("request", (r) => {
      if (new URL(r.url()).pathname === "/v1/me") asked.push(Date.now());
    });
    await page.goto(`${API}/console/t/acme`);
    const notice = page.getByTestId("rate-limited");
    await notice.waitFor({ timeout: 10_000 });
    const text = await notice.innerText();
    assert.match(text, /Too many requests/);
    assert.match(text, /wait \d+ s \(Retry-After\)/);
    const said = Number(text.match(/wait (\d+) s/)[1]);
    assert.ok(Math.abs(said - retryAfter) <= 2, `said ${said} s, the server ${retryAfter} s`);
    await shot(page, "r1-rate-limited", "Too many requests");
    // Nothing more is asked while it waits (up to 3 s of the wait).
    await page.waitForTimeout(Math.min(3000, Math.max(0, said * 1000 - 1500)));
    assert.equal(asked.length, 1, `asked /v1/me ${asked.length} times while waiting`);
    await context.close();
  });
});
