// Shared pieces of the browser tests: the demo's settings, Chromium, screenshots checked
// to be non-blank, the REST API as a script would call it, and the perf report.
import { readFileSync, writeFileSync, mkdirSync, existsSync } from "node:fs";
import { join } from "node:path";
import { inflateSync } from "node:zlib";
import { execFileSync } from "node:child_process";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

export function settings() {
  const file = process.env.WEFT_DEMO_ENV ?? new URL("../../.weft/demo.env", import.meta.url).pathname;
  const env = {};
  for (const line of readFileSync(file, "utf8").split("\n")) {
    const i = line.indexOf("=");
    if (i > 0) env[line.slice(0, i)] = line.slice(i + 1);
  }
  return env;
}

export const OUT = process.env.WEFT_E2E_OUT ?? new URL("../../target/console-e2e/", import.meta.url).pathname;
mkdirSync(OUT, { recursive: true });

export const HEADLESS_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

/** A fresh Chromium (a new temporary profile each launch). */
export async function launch() {
  return chromium.launch({
    executablePath: process.env.WEFT_CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: HEADLESS_ARGS,
  });
}

export async function newPage(browser, storageState) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, storageState });
  const page = await context.newPage();
  return { context, page };
}

/** Decodes an 8-bit PNG (what Chromium writes) into its pixels. */
export function decodePng(buf) {
  assert.equal(buf.toString("latin1", 1, 4), "PNG");
  let pos = 8;
  let width = 0, height = 0, colorType = 0, depth = 0;
  const idat = [];
  while (pos < buf.length) {
    const len = buf.readUInt32BE(pos);
    const type = buf.toString("latin1", pos + 4, pos + 8);
    const data = buf.subarray(pos + 8, pos + 8 + len);
    if (type === "IHDR") {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      depth = data[8];
      colorType = data[9];
    } else if (type === "IDAT") idat.push(data);
    pos += 12 + len;
  }
  assert.equal(depth, 8, "8-bit PNG");
  const bpp = { 2: 3, 6: 4, 0: 1, 4: 2 }[colorType];
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * bpp;
  const px = Buffer.alloc(height * stride);
  for (let y = 0; y < height; y++) {
    const f = raw[y * (stride + 1)];
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let x = 0; x < stride; x++) {
      const a = x >= bpp ? px[y * stride + x - bpp] : 0;
      const b = y > 0 ? px[(y - 1) * stride + x] : 0;
      const c = x >= bpp && y > 0 ? px[(y - 1) * stride + x - bpp] : 0;
      let v = line[x];
      if (f === 1) v += a;
      else if (f === 2) v += b;
      else if (f === 3) v += (a + b) >> 1;
      else if (f === 4) {
        const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
        v += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      px[y * stride + x] = v & 255;
    }
  }
  return { width, height, bpp, px };
}

/** Not blank: many colours, and a fair share of pixels unlike the most common one. */
export function assertNotBlank(png, name) {
  const { width, height, bpp, px } = decodePng(png);
  const counts = new Map();
  for (let i = 0; i < width * height; i += 7) {
    const o = i * bpp;
    const key = (px[o] << 16) | (px[o + 1] << 8) | px[o + 2];
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  const samples = [...counts.values()].reduce((a, b) => a + b, 0);
  const top = Math.max(...counts.values());
  assert.ok(counts.size >= 8, `${name}: only ${counts.size} colours: blank?`);
  assert.ok(samples - top > samples * 0.01, `${name}: ${(((samples - top) / samples) * 100).toFixed(2)}% non-background pixels: blank?`);
}

/** Saves `target/console-e2e/<name>.png` with the key text on screen, and checks it. */
export async function shot(page, name, keyText) {
  if (keyText) {
    const loc = typeof keyText === "string" ? page.getByText(keyText, { exact: false }).first() : keyText;
    await loc.waitFor({ state: "visible", timeout: 15_000 });
  }
  await page.waitForTimeout(150); // let the frame settle
  const file = join(OUT, `${name}.png`);
  const png = await page.screenshot({ path: file, fullPage: false });
  assertNotBlank(png, name);
  return file;
}

/** The REST API with a bearer token, as a script calls it. */
export function rest(base, token) {
  return async (method, path, body, headers = {}) => {
    const r = await fetch(base + path, {
      method,
      headers: {
        Authorization: `Bearer ${token}`,
        ...(body !== undefined ? { "Content-Type": headers["Content-Type"] ?? "application/json" } : {}),
        ...headers,
      },
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
    const text = await r.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = text;
    }
    return { status: r.status, headers: r.headers, body: json };
  };
}

/**
 * Waits for `locator`; when it does not show, fails with what the page did show (its text,
 * `/v1/me` as the page sees it, a screenshot `<name>-failed.png`), not only a timeout.
 */
export async function waitOrExplain(page, locator, name, timeout = 30_000) {
  try {
    await locator.waitFor({ timeout });
  } catch (e) {
    await page.screenshot({ path: join(OUT, `${name}-failed.png`) }).catch(() => {});
    const me = await page
      .evaluate(async () => {
        const r = await fetch("/v1/me", { credentials: "include" });
        return `${r.status} ${await r.text()}`;
      })
      .catch((err) => `(could not ask: ${err})`);
    const text = await page.locator("body").innerText().catch(() => "");
    throw new Error(`${name}: ${e.message}\n/v1/me: ${me.slice(0, 2000)}\npage text: ${text.slice(0, 2000)}`);
  }
}

/** Signs `email` in through the provider's real form, from the console's own redirect. */
export async function signIn(page, api, email, password, path = "/console/") {
  await page.goto(api + path);
  await page.locator('input[name="email"]').waitFor({ timeout: 15_000 });
  await page.fill('input[name="email"]', email);
  await page.fill('input[name="password"]', password);
  await Promise.all([page.waitForURL((u) => u.pathname.startsWith("/console/"), { timeout: 15_000 }), page.click('button[type="submit"]')]);
}

/** Real packets between the demo's pods (network namespaces the demo made). */
export function curlFrom(pod, url) {
  try {
    execFileSync("nsenter", [`--net=/run/netns/weft-demo-${pod}`, "curl", "-s", "-m", "2", "-o", "/dev/null", url], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

const perfFile = join(OUT, "perf.json");
export function recordPerf(key, value) {
  const perf = existsSync(perfFile) ? JSON.parse(readFileSync(perfFile, "utf8")) : {};
  perf[key] = value;
  writeFileSync(perfFile, JSON.stringify(perf, null, 2) + "\n");
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function eventually(what, fn, timeoutMs = 15_000) {
  const end = Date.now() + timeoutMs;
  let last;
  while (Date.now() < end) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await sleep(250);
  }
  throw new Error(`${what}: not within ${timeoutMs} ms${last ? `: ${last.message}` : ""}`);
}
