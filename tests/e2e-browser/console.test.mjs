// End-to-end test of ferry's web console: two redis-servers, `ferry serve`, and headless
// Chromium walking the create wizard until the job is incremental. Saves screenshots of
// each page into docs/screenshots/.
//
//   FERRY_BIN (default: target/debug/ferry), CHROMIUM (default: /usr/bin/chromium),
//   REDIS_SERVER (default: redis-server on PATH).

import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const ferryBin = process.env.FERRY_BIN || path.join(root, "target/debug/ferry");
const shots = path.join(root, "docs/screenshots");
const work = fs.mkdtempSync(path.join(os.tmpdir(), "ferry-e2e-"));
const children = [];
const KEYS = 500;

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function start(cmd, args, name) {
  const log = fs.openSync(path.join(work, name + ".log"), "w");
  const child = spawn(cmd, args, { stdio: ["ignore", log, log], cwd: work });
  children.push(child);
  child.on("error", (e) => { console.error(`${name}: ${e.message}`); });
  return child;
}

/** Sends one command over RESP and returns the first reply line (enough for tests). */
function redis(port, ...args) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, "127.0.0.1");
    let buf = "";
    const cmd = `*${args.length}\r\n` + args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join("");
    sock.on("connect", () => sock.write(cmd));
    sock.on("data", (d) => {
      buf += d.toString();
      const lines = buf.split("\r\n");
      if (lines.length < 2) return;
      const head = lines[0];
      if (head[0] === "$" && head !== "$-1" && lines.length < 3) return;
      sock.end();
      if (head[0] === "-") reject(new Error(head));
      else if (head[0] === "$") resolve(head === "$-1" ? null : lines[1]);
      else resolve(head.slice(1));
    });
    sock.on("error", reject);
  });
}

async function until(what, f, ms = 60000) {
  const deadline = Date.now() + ms;
  for (;;) {
    try { if (await f()) return; } catch (_) { /* not yet */ }
    if (Date.now() > deadline) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function redisServer(name, extra = []) {
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(work, name + "-"));
  start(process.env.REDIS_SERVER || "redis-server", [
    "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
    "--dir", dir, "--repl-diskless-sync-delay", "0", ...extra,
  ], name);
  await until(`${name} to answer`, async () => (await redis(port, "PING")) === "PONG");
  return port;
}

function cleanup() {
  for (const c of children) { try { c.kill("SIGTERM"); } catch (_) { /* gone */ } }
}
process.on("exit", cleanup);

async function main() {
  if (!fs.existsSync(ferryBin)) throw new Error(`no ferry binary at ${ferryBin}: cargo build -p ferry`);
  fs.mkdirSync(shots, { recursive: true });
  const source = await redisServer("source");
  const target = await redisServer("target");
  for (let i = 0; i < KEYS; i++) await redis(source, "SET", `key:${i}`, `value ${i}`);

  // Port 0: the service picks a free port and prints its address.
  start(ferryBin, ["serve", "--listen", "127.0.0.1:0", "--store", `sqlite://${path.join(work, "ferry.db")}`], "ferry");
  let base = null;
  await until("ferry serve to print its address", async () => {
    const m = fs.readFileSync(path.join(work, "ferry.log"), "utf8").match(/ferry service on (http:\/\/[0-9.:]+)\//);
    base = m && m[1];
    return base !== null;
  });
  await until("ferry serve to answer", async () => (await fetch(base + "/api/v1/jobs")).ok);

  // A fresh profile each run (playwright passes it to Chromium as --user-data-dir).
  const browser = await chromium.launchPersistentContext(fs.mkdtempSync(path.join(work, "chromium-")), {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
      "--disable-background-networking", "--disable-component-update", "--no-first-run"],
    viewport: { width: 1200, height: 900 },
  });
  try {
    const page = await browser.newPage();
    page.on("pageerror", (e) => { throw new Error("page error: " + e.message); });
    await page.goto(base + "/");
    await page.getByText("No jobs yet").waitFor();

    // Step 1: basic settings.
    await page.getByRole("link", { name: "Create job" }).click();
    await page.getByLabel("Job name").fill("e2e-copy");
    await page.getByLabel("Description").fill("Browser test: copy the source into the target");
    await page.screenshot({ path: path.join(shots, "1-wizard-basic.png"), fullPage: true });
    await page.getByRole("button", { name: "Next" }).click();

    // Step 2: source and target, with the connectivity test.
    await page.locator("#source-addresses").fill(`127.0.0.1:${source}`);
    await page.locator("#target-addresses").fill(`127.0.0.1:${target}`);
    await page.getByRole("button", { name: "Next" }).click();
    await page.getByText("Test connectivity first").waitFor();
    await page.getByRole("button", { name: "Test connectivity" }).click();
    await page.locator("#connectivity-result .conn").nth(1).waitFor();
    const conn = await page.locator("#connectivity-result").innerText();
    if ((conn.match(/\bok\b/gi) || []).length !== 2) throw new Error("connectivity: " + conn);
    await page.screenshot({ path: path.join(shots, "2-wizard-source-target.png"), fullPage: true });
    await page.getByRole("button", { name: "Next" }).click();

    // Step 3: advanced settings; the scheduled policy shows its windows.
    await page.getByLabel("Sync mode").selectOption("full+incremental");
    await page.getByLabel("Sync rate (MB/s)").fill("50");
    await page.getByLabel(/As scheduled/).check();
    await page.getByLabel("Connection failure: retry from").waitFor();
    await page.getByLabel(/Immediately/).check();
    await page.getByLabel("Limit retrying after a connection failure").check();
    await page.getByLabel("Give up after (minutes)").first().fill("30");
    await page.screenshot({ path: path.join(shots, "3-wizard-advanced.png"), fullPage: true });
    await page.getByRole("button", { name: "Next" }).click();

    // Step 4: the pre-check runs and shows its table.
    await page.locator("#precheck-summary").waitFor();
    const summary = await page.locator("#precheck-summary").innerText();
    if (/failed/.test(summary)) throw new Error("pre-check failed: " + await page.locator("#precheck-result").innerText());
    const checks = await page.locator("#precheck-result tbody tr").count();
    if (checks < 8) throw new Error(`only ${checks} checks shown`);
    await page.screenshot({ path: path.join(shots, "4-wizard-precheck.png"), fullPage: true });
    await page.getByRole("button", { name: "Finish" }).click();

    // The job page: incremental, 100%, the transaction counts.
    await page.waitForURL(/#\/jobs\/e2e-copy$/);
    await until("the job to be incremental", async () =>
      (await page.locator("#fig-state").innerText()).includes("incremental"));
    await until("progress 100%", async () => (await page.locator("#fig-progress").innerText()) === "100");
    const count = async (id) => Number((await page.locator(id).innerText()).replace(/,/g, ""));
    await until("the transaction counts", async () => (await count("#fig-target-tx")) >= KEYS && (await count("#fig-source-tx")) >= KEYS);
    const before = await count("#fig-target-tx");
    for (let i = 0; i < 50; i++) await redis(source, "SET", `later:${i}`, "x");
    await until("the writes on the target", async () => (await redis(target, "GET", "later:49")) === "x");
    await until("the page to count the writes", async () => (await count("#fig-target-tx")) >= before + 50);
    // Verify from the page: the stored result says the copy is equal.
    await page.getByRole("button", { name: "Verify" }).click();
    await until("the verification to finish equal", async () =>
      (await page.locator("#fig-verify").innerText()).startsWith("equal"));
    await page.waitForTimeout(3000); // a few points on the chart
    await until("the chart's time axis", async () =>
      (await page.locator("#chart text.axis-end").count()) === 1);
    await page.screenshot({ path: path.join(shots, "5-job.png"), fullPage: true });

    // Pause and resume from the page.
    await page.getByRole("button", { name: "Pause" }).click();
    await until("paused", async () => (await page.locator("#fig-state").innerText()).includes("paused"));
    await page.getByRole("button", { name: "Resume" }).click();
    await until("incremental again", async () => (await page.locator("#fig-state").innerText()).includes("incremental"));

    // Cut over from the page: the source is held 30 s, so this comes last for the job.
    page.once("dialog", (d) => d.accept());
    await page.getByRole("button", { name: "Cut over" }).click();
    await until("the cutover to finish", async () =>
      (await page.locator("#job-cutover").innerText()).startsWith("cut over: the target holds every write"));
    await page.screenshot({ path: path.join(shots, "5b-cutover.png"), fullPage: true });

    // The list.
    await page.getByRole("link", { name: "← Jobs" }).click();
    await page.getByRole("link", { name: "e2e-copy" }).waitFor();
    // The state cell (the mode cell says "full+incremental" from the start).
    await until("the list to show incremental", async () =>
      (await page.locator("#jobs-body span.state").first().innerText()) === "incremental");
    if ((await page.locator("#jobs-body td.error-cell").first().innerText()) !== "–")
      throw new Error("the list shows an error for a healthy job");
    await page.screenshot({ path: path.join(shots, "6-jobs.png"), fullPage: true });
    console.log(`ok: console e2e passed; screenshots in ${path.relative(root, shots)}/`);
  } finally {
    await browser.close();
  }
}

main().then(() => { cleanup(); process.exit(0); }, (e) => {
  console.error("FAIL:", e.message);
  const log = path.join(work, "ferry.log");
  if (fs.existsSync(log)) console.error(fs.readFileSync(log, "utf8").split("\n").slice(-30).join("\n"));
  cleanup();
  process.exit(1);
});
