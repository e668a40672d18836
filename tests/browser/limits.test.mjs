// The hub's refusals reach the user as readable notices: rate limits here
// (recipient offline, name taken and operator disconnects are in the other files).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launchBrowser, openPage, screenshot, signIn, expectMessage } from './helpers.mjs';

let server;
let browser;

before(async () => {
  // Three messages per second, burst three; a hundred strikes before a disconnect.
  server = await startServer({ args: ['--rate-messages-per-sec', '3'] });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test('a burst over the rate limit is refused with a readable notice', async () => {
  const page = await openPage(browser, server.http);
  await signIn(page, 'speedy');
  // Ten messages submitted in one go, far faster than 3/s.
  await page.evaluate(() => {
    const box = document.getElementById('composer-text');
    const form = document.getElementById('composer');
    for (let i = 1; i <= 10; i += 1) {
      box.value = `burst ${i}`;
      form.requestSubmit();
    }
  });
  await page.locator('#notices .notice-error', { hasText: 'You are sending too fast (rate limited) — message not sent.' }).first().waitFor();
  await expectMessage(page, 'burst 10');
  await page.locator('#log li.msg[data-state="pending"]').first().waitFor({ state: 'detached' });
  const acked = await page.locator('#log li.msg[data-state="acked"]').count();
  const failed = await page.locator('#log li.msg[data-state="failed"]').count();
  assert.equal(acked + failed, 10);
  assert.ok(acked >= 1, 'the first messages of the burst went through');
  assert.ok(failed >= 5, `most of the burst was refused (${failed} refused)`);
  // Still connected: refusals alone do not end the session.
  await page.locator('#status[data-state="connected"]').waitFor();
  await screenshot(page, 'limits-rate-limited');
  assert.deepEqual(page.problems, []);
});
