// Browser pages and the `switchboard connect` terminal client talk to each other.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, launchBrowser, openPage, screenshot, signIn, conv, openConversation,
  sendMessage, expectMessage, joinRoom, startCli,
} from './helpers.mjs';

let server;
let browser;
let cli;

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});

after(async () => {
  await cli?.stop();
  await browser?.close();
  await server?.stop();
});

test('two pages and the CLI chat privately and in a room', async () => {
  const web1 = await openPage(browser, server.http);
  const web2 = await openPage(browser, server.http);
  await signIn(web1, 'web1');
  await signIn(web2, 'web2');
  cli = startCli(server, 'cli');
  await conv(web1, 'dm:cli').waitFor();

  // Private: page → CLI and CLI → page.
  await openConversation(web1, 'dm:cli');
  await sendMessage(web1, 'hello terminal');
  await web1.locator('#log li.msg[data-state="acked"]').filter({ hasText: 'hello terminal' }).waitFor();
  await cli.waitForLine(/^\[web1\] hello terminal$/, 'the DM from web1');
  cli.send('@web2 hello browser two');
  await openConversation(web2, 'dm:cli');
  await expectMessage(web2, 'hello browser two', { from: 'cli' });

  // A room with all three.
  await joinRoom(web1, 'mixed');
  await joinRoom(web2, 'mixed');
  cli.send('/join mixed');
  await web1.locator('#conv-subtitle', { hasText: '3 members: cli, web1, web2' }).waitFor();
  cli.send('#mixed hi room from the terminal');
  await expectMessage(web1, 'hi room from the terminal', { from: 'cli' });
  await expectMessage(web2, 'hi room from the terminal', { from: 'cli' });
  await sendMessage(web2, 'hi everyone from web2');
  await expectMessage(web1, 'hi everyone from web2', { from: 'web2' });
  await cli.waitForLine(/^\[#mixed web2\] hi everyone from web2$/, 'the room message from web2');
  // An operator broadcast reaches the CLI and the pages alike.
  const response = await fetch(`${server.http}/api/broadcast`, { method: 'POST', body: 'hello all three' });
  assert.deepEqual(await response.json(), { delivered: 3 });
  await cli.waitForLine(/^\[server\] hello all three$/, 'the broadcast');
  await openConversation(web2, 'server');
  await expectMessage(web2, 'hello all three', { from: 'operator' });

  await screenshot(web1, 'cli-room-web1');
  await openConversation(web2, 'dm:cli');
  await screenshot(web2, 'cli-private-web2');
  for (const page of [web1, web2]) assert.deepEqual(page.problems, []);
});
