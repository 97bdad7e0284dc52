// The console's writing pages in a real Chromium against the demo: the service form
// (errors at the field, a taken VIP, drain, a stale revision, delete), a policy's NotEnforced
// conditions, Connectivity (a workload, a probe and its outcome, 422 at the field) and
// Settings (members, API tokens shown once, the audit log with its diff, the tenant).
// Every step checks what the server holds afterwards, and leaves a screenshot.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { eventually, launch, newPage, rest, settings, shot, signIn, waitOrExplain } from "./harness.mjs";

const env = settings();
const API = env.WEFT_API_URL;
const PASSWORD = env.WEFT_DEMO_USER_PASSWORD;
const owner = rest(API, env.WEFT_TOKEN);
const operator = rest(API, env.WEFT_OPERATOR_TOKEN);
const T = "/v1/tenants/acme";
const C = `${T}/clusters/prod-eu`;

let browser;
let page;

describe("console pages that write", { concurrency: false }, () => {
  before(async () => {
    browser = await launch();
    ({ page } = await newPage(browser));
    // Leftovers of an interrupted run.
    await owner("DELETE", `${C}/services/e2e-svc`);
    await owner("DELETE", `${T}/policies/e2e-apiserver`);
    await owner("DELETE", `${C}/test-workloads/e2e-echo`);
    await owner("DELETE", `${T}/members/e2e-invite@example.com`);
    await signIn(page, API, env.WEFT_DEMO_USER_EMAIL, PASSWORD, "/console/t/acme/services");
  });
  after(async () => {
    await browser?.close();
  });

  test("services: a taken VIP (409) and a bad port at their fields; create; 412 → overwrite; drain; delete", async () => {
    await page.getByTestId("new-service").click();
    const form = page.getByRole("dialog", { name: "New service" });
    await form.getByLabel("Name", { exact: true }).fill("e2e-svc");
    await form.getByLabel("Labels").fill("team=e2e");
    await form.getByLabel("Frontend 1 VIP").fill("10.96.0.10"); // the demo's `web` has 10.96.0.10:80/TCP
    await form.getByLabel("Frontend 1 port").fill("80");
    await form.getByLabel("Backend 1 address").fill("10.0.1.11");
    await form.getByLabel("Backend 1 port").fill("8080");
    await form.getByRole("button", { name: "Add backend" }).click();
    await form.getByLabel("Backend 2 address").fill("10.0.2.10");
    await form.getByLabel("Backend 2 port").fill("8080");
    await form.getByTestId("service-save").click();
    await form.locator('[data-field="frontends"]').getByText("already belongs to another service").waitFor();
    await form.getByText("Conflict: 1 error").waitFor();
    assert.equal((await owner("GET", `${C}/services/e2e-svc`)).status, 404, "a taken VIP creates nothing");
    await shot(page, "p1-service-409-vip", "already belongs to another service");

    await form.getByLabel("Frontend 1 VIP").fill("10.96.0.77");
    await form.getByLabel("Backend 2 port").fill("0");
    await form.getByTestId("service-save").click();
    const portError = form.locator('[data-field="backends[1].port"]');
    await portError.waitFor();
    assert.ok((await portError.innerText()).length > 3, "a message at backends[1].port");
    // At the second backend's row, not the first's.
    assert.equal(await form.locator('[data-backend="1"] [data-field="backends[1].port"]').count(), 1);
    assert.equal(await form.locator('[data-backend="0"] .field-error').count(), 0);
    assert.equal((await owner("GET", `${C}/services/e2e-svc`)).status, 404, "nothing created");
    await shot(page, "p1-service-field-error", portError);

    await form.getByLabel("Backend 2 port").fill("8080");
    await form.getByTestId("service-save").click();
    const row = page.locator('tr[data-service="e2e-svc"]');
    await row.waitFor();
    const created = (await owner("GET", `${C}/services/e2e-svc`)).body;
    assert.deepEqual(created.frontends, [{ vip: "10.96.0.77", port: 80, protocol: "TCP" }]);
    assert.equal(created.backends.length, 2);
    assert.deepEqual(created.labels, { team: "e2e" });
    await eventually("realized on both nodes", async () => /2\/2/.test(await row.innerText()), 20_000);

    // Opened here, changed over REST, then saved here: the 412 view, nothing overwritten.
    await row.getByRole("button", { name: "Edit" }).click();
    const edit = page.getByRole("dialog", { name: "Edit e2e-svc" });
    await edit.getByLabel("Backend 1 weight").waitFor();
    const patched = await owner("PATCH", `${C}/services/e2e-svc`, { labels: { team: "rest" } }, { "Content-Type": "application/merge-patch+json" });
    assert.equal(patched.status, 200, JSON.stringify(patched.body));
    await edit.locator('[data-backend="0"]').getByRole("button", { name: "Drain" }).click();
    await edit.locator('[data-backend="0"]').getByText("draining").waitFor();
    await edit.getByTestId("service-save").click();
    await edit.getByText("Changed by someone else since you opened it").waitFor();
    await edit.getByTestId("service-theirs").getByText('"rest"').waitFor();
    let now = (await owner("GET", `${C}/services/e2e-svc`)).body;
    assert.deepEqual(now.labels, { team: "rest" }, "the REST change is kept");
    assert.equal(now.backends[0].weight, 1, "mine was not written");
    await shot(page, "p1-service-412", "Changed by someone else");
    await edit.getByRole("button", { name: "Overwrite with mine" }).click();
    await edit.waitFor({ state: "detached" });
    now = (await owner("GET", `${C}/services/e2e-svc`)).body;
    assert.equal(now.backends[0].weight, 0, "drained: weight 0");
    assert.deepEqual(now.labels, { team: "e2e" }, "overwritten on purpose");
    await row.getByText("(draining)").waitFor();
    await shot(page, "p1-service-drained", "(draining)");

    await row.getByRole("button", { name: "Edit" }).click();
    await page.getByTestId("service-delete").click();
    await page.getByTestId("service-confirm-delete").click();
    await row.waitFor({ state: "detached" });
    assert.equal((await owner("GET", `${C}/services/e2e-svc`)).status, 404, "deleted");
  });

  test("policies: NotEnforced conditions shown in the list and the editor", async () => {
    const r = await owner("POST", `${T}/policies`, {
      name: "e2e-apiserver",
      spec: {
        endpointSelector: { matchLabels: { app: "e2e-nobody" } },
        egress: [{ toEntities: ["kube-apiserver"], toPorts: [{ ports: [{ port: "443", protocol: "TCP" }] }] }],
      },
    });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    assert.ok(r.body.status.conditions?.length > 0, "the server reports a condition");
    try {
      await page.goto(`${API}/console/t/acme/policies`);
      const chip = page.locator('tr[data-policy="e2e-apiserver"]').getByTestId("conditions-chip");
      await chip.waitFor();
      assert.match(await chip.innerText(), /not enforced/);
      await page.goto(`${API}/console/t/acme/policies/e2e-apiserver`);
      const box = page.getByTestId("conditions");
      await box.waitFor();
      assert.match(await box.innerText(), /spec\.egress\[0\]\.toEntities\[0\]/);
      assert.match(await box.innerText(), /NotEnforced/);
      await shot(page, "p2-policy-not-enforced", "Not enforced");
    } finally {
      await owner("DELETE", `${T}/policies/e2e-apiserver`);
    }
  });

  test("connectivity: a test workload, a probe to it (outcome, latency, who answered), 422 at the field", async () => {
    await page.goto(`${API}/console/t/acme/connectivity`);
    await page.getByRole("button", { name: "New test workload" }).click();
    await page.getByLabel("Workload name").fill("e2e-echo");
    await page.getByLabel("Workload node").selectOption("demo-n2");
    await page.getByLabel("Workload labels").fill("app=e2e-echo");
    await page.getByLabel("Echo ports").fill("7070");
    await page.getByRole("button", { name: "Create", exact: true }).click();
    const wl = page.locator('tr[data-workload="e2e-echo"]');
    await wl.waitFor();
    await eventually("the workload ready", async () => /ready/.test(await wl.innerText()) && !/starting/.test(await wl.innerText()), 30_000);
    const ip = (await wl.locator("code").first().innerText()).trim();

    // A node that is not in the cluster: 422, at the Node field.
    await page.getByLabel("Node", { exact: true }).fill("no-such-node");
    await page.getByLabel("Target").fill(`${ip}:7070`);
    await page.getByTestId("run-probe").click();
    await page.locator('[data-field="node"]').getByText("is not a node of this cluster").waitFor();
    await shot(page, "p3-probe-422", "is not a node of this cluster");

    await page.getByLabel("Node", { exact: true }).fill("demo-n1");
    await page.getByTestId("run-probe").click();
    const result = page.getByTestId("probe-result");
    await eventually("the probe's outcome", async () => /connected|refused|timeout|error/.test(await result.innerText()), 20_000);
    const text = await result.innerText();
    assert.match(text, /connected in [\d.]+ (ms|µs), answered by e2e-echo/, text);
    const probes = (await owner("GET", `${C}/probes?limit=1000`)).body.items.filter((p) => p.target === `${ip}:7070` && p.node === "demo-n1");
    assert.ok(probes.some((p) => p.result?.outcome === "connected" && p.result?.reply_from === "e2e-echo"), JSON.stringify(probes));
    await page.locator('tr[data-outcome="connected"]').first().waitFor();
    await shot(page, "p3-probe-connected", "answered by e2e-echo");

    await wl.getByRole("button", { name: "Delete" }).click();
    await wl.waitFor({ state: "detached" });
    assert.equal((await owner("GET", `${C}/test-workloads/e2e-echo`)).status, 404);
  });

  test("settings: members (invite, role, remove), an API token shown once then revoked, the audit log, the tenant", async () => {
    // Members.
    await page.goto(`${API}/console/t/acme/settings/members`);
    await page.getByLabel("E-mail").fill("e2e-invite@example.com");
    await page.getByLabel("Role", { exact: true }).selectOption("editor");
    await page.getByRole("button", { name: "Invite" }).click();
    const inv = page.locator('tr[data-member="e2e-invite@example.com"]');
    await inv.getByText("invited").waitFor();
    const member = async () => (await owner("GET", `${T}/members?limit=1000`)).body.items.find((m) => m.email === "e2e-invite@example.com");
    assert.equal((await member()).role, "editor");
    await inv.getByLabel("Role of e2e-invite@example.com").selectOption("viewer");
    await eventually("role changed", async () => (await member())?.role === "viewer");
    await shot(page, "p4-members", "e2e-invite@example.com");
    page.once("dialog", (d) => d.accept());
    await inv.getByRole("button", { name: "Withdraw" }).click();
    await inv.waitFor({ state: "detached" });
    assert.equal(await member(), undefined, "removed");

    // API tokens: the secret once; it works; gone after a reload; revoked → 401.
    await page.getByRole("link", { name: "API tokens" }).click();
    const tokenName = `e2e-tok-${Date.now() % 100000}`;
    await page.getByLabel("Token name").fill(tokenName);
    await page.getByLabel("Token role").selectOption("viewer");
    await page.getByRole("button", { name: "Create token" }).click();
    const secret = (await page.getByTestId("token-value").innerText()).trim();
    assert.match(secret, /^weft_/);
    await shot(page, "p4-token-once", "shown only this once");
    assert.equal((await rest(API, secret)("GET", "/v1/me")).status, 200, "the secret works");
    await page.reload();
    const tokenRow = page.locator(`tr[data-api-token="${tokenName}"]`);
    await tokenRow.waitFor();
    assert.ok(!(await page.content()).includes(secret), "the secret is not shown again");
    await tokenRow.getByRole("button", { name: "Revoke" }).click();
    await tokenRow.getByText("revoked").waitFor();
    assert.equal((await rest(API, secret)("GET", "/v1/me")).status, 401, "revoked");

    // The audit log, filtered (in the URL), with the revocation's before/after.
    await page.getByRole("link", { name: "Audit log" }).click();
    await page.getByLabel("Resource kind").selectOption("api_token");
    await page.getByLabel("Action").selectOption("revoke");
    await page.waitForURL(/resource_kind=api_token.*action=revoke|action=revoke.*resource_kind=api_token/);
    const entry = page.locator(`tr[data-audit="revoke:api_token:${tokenName}"]`);
    await entry.waitFor();
    // The unfiltered page stays on screen while the filtered one loads: wait for the
    // filtered answer (or time out and show what is listed).
    const onlyRevocations = () =>
      page.locator("tr[data-audit]").evaluateAll((rows) => rows.map((r) => r.getAttribute("data-audit")));
    let kinds = await onlyRevocations();
    for (let i = 0; i < 50 && !kinds.every((k) => k.startsWith("revoke:api_token:")); i++) {
      await page.waitForTimeout(100);
      kinds = await onlyRevocations();
    }
    assert.ok(kinds.every((k) => k.startsWith("revoke:api_token:")), kinds.join(","));
    await entry.click();
    const diff = page.getByTestId("audit-diff");
    await diff.getByText("revoked_at").waitFor();
    await shot(page, "p4-audit-diff", "revoked_at");

    // The tenant's display name.
    const before = (await owner("GET", T)).body;
    await page.getByRole("link", { name: "Tenant" }).click();
    await page.getByLabel("Display name").fill("Acme from the console");
    await page.getByRole("button", { name: "Save" }).click();
    await page.getByText("Saved.").waitFor();
    assert.equal((await owner("GET", T)).body.display_name, "Acme from the console");
    await shot(page, "p4-tenant", "Saved.");
    const restored = await owner("PUT", T, { name: before.name, display_name: before.display_name, labels: before.labels });
    assert.equal(restored.status, 200, JSON.stringify(restored.body));
  });

  test("tenant: an owner deletes one after typing its name", async () => {
    const name = `e2e-doomed-${Date.now() % 100000}`;
    assert.equal((await operator("POST", "/v1/tenants", { name })).status, 201);
    const inv = await operator("POST", `/v1/tenants/${name}/members`, { email: env.WEFT_DEMO_USER_EMAIL, role: "owner" });
    assert.equal(inv.status, 201, JSON.stringify(inv.body));
    // The invite becomes a membership at the next sign-in.
    const o = await newPage(browser);
    try {
      await signIn(o.page, API, env.WEFT_DEMO_USER_EMAIL, PASSWORD, `/console/t/${name}/settings/tenant`);
      await o.page.getByText("Delete this tenant").waitFor();
      const button = o.page.getByRole("button", { name: `Delete ${name}` });
      assert.equal(await button.isDisabled(), true, "disabled until the name is typed");
      await o.page.getByLabel("Type the tenant name").fill(name);
      await shot(o.page, "p4-tenant-delete", "Delete this tenant");
      await button.click();
      await o.page.waitForURL(/\/console\/t\/acme\/?$/);
      assert.equal((await operator("GET", `/v1/tenants/${name}`)).status, 404, "deleted");
    } finally {
      await operator("DELETE", `/v1/tenants/${name}`);
      await o.context.close();
    }
  });

  test("roles above one's own are disabled for an admin", async () => {
    const email = env.WEFT_DEMO_VIEWER_EMAIL;
    const setRole = async (role) => assert.equal((await operator("PATCH", `${T}/members/${encodeURIComponent(email)}`, { role })).status, 200);
    await setRole("admin");
    const a = await newPage(browser);
    try {
      await signIn(a.page, API, email, PASSWORD, "/console/t/acme/settings/members");
      await waitOrExplain(a.page, a.page.getByLabel("E-mail"), "p5-admin-invite-form");
      const ownerOption = a.page.getByLabel("Role", { exact: true }).locator('option[value="owner"]');
      assert.equal(await ownerOption.isDisabled(), true, "an admin cannot invite an owner");
      assert.equal(await a.page.getByLabel("Role", { exact: true }).locator('option[value="admin"]').isDisabled(), false);
      const ownerRow = a.page.locator(`tr[data-member="${env.WEFT_DEMO_USER_EMAIL}"]`);
      assert.equal(await ownerRow.getByRole("combobox").isDisabled(), true, "an admin cannot touch an owner");
      assert.equal(await ownerRow.getByRole("button").count(), 0, "nor remove one");
      await shot(a.page, "p5-admin-members", env.WEFT_DEMO_USER_EMAIL);

      // Back to viewer: the same pages show no edit controls (the console reads the role anew).
      await setRole("viewer");
      await a.page.goto(`${API}/console/t/acme/settings/members`);
      await a.page.locator(`tr[data-member="${env.WEFT_DEMO_USER_EMAIL}"]`).waitFor();
      assert.equal(await a.page.getByRole("button", { name: "Invite" }).count(), 0);
      assert.equal(await a.page.getByRole("link", { name: "API tokens" }).count(), 0);
      assert.equal(await a.page.getByRole("link", { name: "Audit log" }).count(), 0);
      await a.page.goto(`${API}/console/t/acme/services`);
      await a.page.locator('tr[data-service="web"]').waitFor();
      assert.equal(await a.page.getByTestId("new-service").count(), 0);
      assert.equal(await a.page.getByRole("button", { name: "Edit" }).count(), 0);
      await a.page.goto(`${API}/console/t/acme/connectivity`);
      await a.page.getByRole("heading", { name: "Probes" }).waitFor();
      assert.equal(await a.page.getByTestId("run-probe").count(), 0);
      assert.equal(await a.page.getByRole("button", { name: "New test workload" }).count(), 0);
      await shot(a.page, "p5-viewer-connectivity", "Probes");
    } finally {
      await setRole("viewer");
      await a.context.close();
    }
  });
});
