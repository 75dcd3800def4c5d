// Anthropic Node SDK (@anthropic-ai/sdk) conformance checks against a running modelmux: the same
// setup and scenarios as anthropic_conformance.py (see its docstring and scripts/conformance.sh).
//
// node anthropic_conformance.mjs --modules DIR --base-url URL --native-mock URL --chat-mock URL
//   --usage-log PATH       (DIR: the folder whose node_modules holds @anthropic-ai/sdk)
//
// Prints one PASS/FAIL line per check; exits 1 if any check fails.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { resolve } from 'node:path';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const require = createRequire(resolve(args.modules, 'package.json'));
const Anthropic = require('@anthropic-ai/sdk');
const { VERSION: version } = require('@anthropic-ai/sdk/version');

const CLIENT_KEY = 'sk-mm-client-1';
const LIMITED_KEY = 'sk-mm-limited';
const MODELS = { native: 'native-m', translate: 'chat-m' };
const WEATHER_ARGS = { city: 'Paris', unit: 'celsius' };
const WEATHER_TOOL = {
  name: 'get_weather',
  description: 'The weather in a city',
  input_schema: { type: 'object', properties: { city: { type: 'string' }, unit: { type: 'string' } }, required: ['city'] },
};
const PNG = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==';
const MOCKS = { native: args['native-mock'], translate: args['chat-mock'] };
const failures = [];
let count = 0;

const client = new Anthropic({ baseURL: args['base-url'], apiKey: CLIENT_KEY, maxRetries: 0, timeout: 15000 });
const user = (text) => [{ role: 'user', content: text }];

async function check(label, fn) {
  count += 1;
  const started = performance.now();
  try {
    const detail = await fn();
    console.log(`PASS ${label}${detail ? ` (${detail})` : ''} [${Math.round(performance.now() - started)} ms]`);
  } catch (e) {
    failures.push(label);
    console.log(`FAIL ${label}: ${e instanceof assert.AssertionError ? e.message.split('\n').join(' ') : `unexpected ${e?.constructor?.name}: ${e?.message}`}`);
  }
}

async function mockRequests(mode) {
  const r = await fetch(`${MOCKS[mode]}/__requests`);
  return r.json();
}
async function lastSent(mode) {
  const all = await mockRequests(mode);
  assert.ok(all.length > 0, `the ${mode} mock received nothing`);
  return all[all.length - 1];
}

// One Messages call: the final message, the raw event kinds (deltas by their type) and headers.
async function ask(mode, stream, params) {
  const body = { model: MODELS[mode], max_tokens: 256, ...params };
  const options = { headers: { 'x-claude-code-session-id': 'sess-conformance-1' } };
  if (!stream) {
    const { data, response } = await client.messages.create(body, options).withResponse();
    return { msg: data, kinds: null, headers: response.headers };
  }
  const s = client.messages.stream(body, options);
  const kinds = [];
  for await (const ev of s) kinds.push(ev.type === 'content_block_delta' ? ev.delta.type : ev.type);
  const msg = await s.finalMessage();
  return { msg, kinds, headers: s.response.headers };
}

const plain = (msg) => msg.content.map((b) => Object.fromEntries(Object.entries(b).filter(([, v]) => v != null)));

async function textCheck(mode, stream) {
  const { msg, kinds } = await ask(mode, stream, { messages: user('[scenario:text] say hello') });
  assert.deepEqual(plain(msg), [{ type: 'text', text: 'Hello from the mock.' }], 'content');
  assert.deepEqual([msg.role, msg.stop_reason, msg.stop_sequence], ['assistant', 'end_turn', null]);
  assert.deepEqual([msg.usage.input_tokens, msg.usage.output_tokens], [12, 5], 'usage');
  assert.equal(msg.model, mode === 'native' ? 'mock-native' : 'chat-m', 'model');
  if (stream) {
    assert.deepEqual(kinds, ['message_start', 'content_block_start', 'text_delta', 'text_delta', 'text_delta',
      'text_delta', 'content_block_stop', 'message_delta', 'message_stop'], 'event sequence');
  }
}

async function systemCheck(mode, stream) {
  const blocks = [
    { type: 'text', text: 'x-anthropic-billing-header: cc_version=9.9.9; cc_entrypoint=sdk-ts' },
    { type: 'text', text: 'You are terse.' },
    { type: 'text', text: 'Answer in French.', cache_control: { type: 'ephemeral' } },
  ];
  const { msg } = await ask(mode, stream, { system: blocks, messages: user('[scenario:system] hi') });
  const want = mode === 'native' ? `system=${blocks.map((b) => b.text).join('\n')}` : 'system=You are terse.\nAnswer in French.';
  assert.equal(msg.content[0].text, want, 'text');
}

async function imageCheck(mode, stream) {
  const content = [
    { type: 'text', text: '[scenario:image] what are these?' },
    { type: 'image', source: { type: 'base64', media_type: 'image/png', data: PNG } },
    { type: 'image', source: { type: 'url', url: 'https://example.com/cat.png' } },
  ];
  const { msg } = await ask(mode, stream, { messages: [{ role: 'user', content }] });
  const want = mode === 'native'
    ? `saw image image/png ${PNG}; image url https://example.com/cat.png`
    : `saw image_url data:image/png;base64,${PNG}; image_url https://example.com/cat.png`;
  assert.equal(msg.content[0].text, want);
}

async function toolLoop(mode, stream, split) {
  const first = user(`[scenario:${split ? 'tool_split' : 'tool_one'}] weather in Paris?`);
  const { msg, kinds } = await ask(mode, stream, { tools: [WEATHER_TOOL], messages: first });
  assert.equal(msg.stop_reason, 'tool_use');
  assert.deepEqual(msg.content.map((b) => b.type), ['text', 'tool_use']);
  const call = msg.content[1];
  assert.deepEqual([call.name, call.input], ['get_weather', WEATHER_ARGS], 'tool_use');
  if (stream) assert.equal(kinds.filter((k) => k === 'input_json_delta').length, split ? 12 : 1, 'input_json_delta events');
  const second = [...first,
    { role: 'assistant', content: [{ type: 'text', text: 'Let me check.' }, { type: 'tool_use', id: call.id, name: call.name, input: call.input }] },
    { role: 'user', content: [{ type: 'tool_result', tool_use_id: call.id, content: '18 C and sunny' }, { type: 'text', text: 'Summarize.' }] }];
  const answer = await ask(mode, stream, { tools: [WEATHER_TOOL], messages: second });
  assert.equal(answer.msg.content[0].text, `Result for ${call.id}: 18 C and sunny`);
  const sent = (await lastSent(mode)).body.messages;
  if (mode === 'translate') {
    assert.deepEqual(sent.map((m) => m.role), ['user', 'assistant', 'tool', 'user']);
    assert.deepEqual(JSON.parse(sent[1].tool_calls[0].function.arguments), WEATHER_ARGS);
    assert.deepEqual([sent[2].tool_call_id, sent[2].content], [call.id, '18 C and sunny']);
  } else {
    assert.deepEqual(sent, second);
  }
  return `tool_use id ${call.id}`;
}

async function toolChoice(mode, stream, choice) {
  const { msg } = await ask(mode, stream, { tools: [WEATHER_TOOL], tool_choice: choice, messages: user('[scenario:tool_choice] weather?') });
  let want;
  if (mode === 'native') want = { tool_choice: choice };
  else if (choice.type === 'any') want = { tool_choice: 'required' };
  else want = { tool_choice: { type: 'function', function: { name: 'get_weather' } }, parallel_tool_calls: false };
  assert.deepEqual(JSON.parse(msg.content[0].text), want);
}

async function stopSequences(mode, stream) {
  const { msg } = await ask(mode, stream, { stop_sequences: ['END', 'STOP'], messages: user('[scenario:stop] count') });
  assert.deepEqual([msg.content[0].text, msg.stop_reason, msg.stop_sequence], ['one two', 'stop_sequence', 'STOP']);
}

async function thinking(mode, stream) {
  const { msg, kinds } = await ask(mode, stream, { max_tokens: 2048, thinking: { type: 'enabled', budget_tokens: 1024 },
    messages: user('[scenario:thinking] six times seven?') });
  assert.deepEqual(msg.content.map((b) => [b.type, b.thinking ?? b.text]), [['thinking', 'Six times seven.'], ['text', '42']]);
  if (stream) assert.equal(kinds.filter((k) => k === 'thinking_delta').length, 2);
}

async function ledgerCheck(mode, stream) {
  const { msg, headers } = await ask(mode, stream, { metadata: { user_id: 'ledger-user' }, messages: user('[scenario:ledger] count me') });
  const u = msg.usage;
  assert.deepEqual([u.input_tokens, u.cache_creation_input_tokens, u.cache_read_input_tokens, u.output_tokens],
    mode === 'native' ? [3, 7, 11, 9] : [10, 0, 11, 9], 'client usage');
  const rid = headers.get('x-request-id');
  let line;
  for (let i = 0; i < 100 && !line; i++) {
    line = readFileSync(args['usage-log'], 'utf8').split('\n').filter(Boolean).map(JSON.parse).find((l) => l.request_id === rid);
    if (!line) await new Promise((r) => setTimeout(r, 50));
  }
  assert.ok(line, `no ledger line for ${rid}`);
  const got = Object.fromEntries(Object.entries(line).filter(([k]) => !['ts', 'request_id', 'duration_ms', 'ttfb_ms', 'backend'].includes(k)));
  const writes = mode === 'native' ? { cache_write_tokens: 7, cache_write_1h_tokens: 3 } : {};
  // Key order too: deepEqual ignores it, the line's bytes do not.
  assert.equal(JSON.stringify(got), JSON.stringify({ replica: 'conformance', user: 'sdk', key: 'sdk', end_user: 'ledger-user', session: 'sess-conformance-1',
    model: MODELS[mode], path: '/messages', status: 200, prompt_tokens: 21, completion_tokens: 9, cached_tokens: 11, ...writes,
    reasoning_tokens: 0, estimated: false, outcome: 'complete' }), 'ledger line');
}

async function aliasCheck(mode, stream) {
  const alias = mode === 'native' ? 'claude-native-test-1' : 'claude-sonnet-4-5-20250929';
  const params = { model: alias, max_tokens: 64, messages: user('[scenario:text] hi') };
  let msg;
  if (stream) msg = await client.messages.stream(params).finalMessage();
  else msg = await client.messages.create(params);
  assert.equal(msg.content[0].text, 'Hello from the mock.');
  assert.equal(msg.model, mode === 'native' ? 'mock-native' : alias, 'model');
  assert.equal((await lastSent(mode)).body.model, mode === 'native' ? 'mock-native' : 'mock-chat', "the backend's model");
}

async function modelsList() {
  const page = await client.models.list();
  assert.deepEqual(page.data.map((m) => [m.type, m.id, m.display_name]),
    [['model', 'native-m', 'Native mock'], ['model', 'chat-m', 'Chat mock']]);
  assert.deepEqual([page.has_more, page.first_id, page.last_id], [false, 'native-m', 'chat-m']);
  for (const m of page.data) assert.ok(!Number.isNaN(Date.parse(m.created_at)), `created_at ${m.created_at}`);
  const one = await client.models.retrieve('chat-m');
  assert.deepEqual([one.type, one.id, one.display_name], ['model', 'chat-m', 'Chat mock']);
  const hello = await fetch(`${args['base-url']}/api/hello`, { method: 'HEAD' });
  assert.equal(hello.status, 200, 'HEAD /api/hello');
  return page.data.map((m) => m.id).join(', ');
}

async function errorMidStream(mode) {
  const got = [];
  try {
    const s = client.messages.stream({ model: MODELS[mode], max_tokens: 100, messages: user('[scenario:error_mid] go') });
    for await (const ev of s) if (ev.type === 'content_block_delta') got.push(ev.delta.text);
  } catch (e) {
    assert.ok(e instanceof Anthropic.APIError, `${e?.constructor?.name}: ${e?.message}`);
    assert.deepEqual(e.error, mode === 'native'
      ? { type: 'error', error: { type: 'overloaded_error', message: 'the mock backend is overloaded' } }
      : { type: 'error', error: { type: 'api_error', message: 'the mock backend ran out of memory' } });
    assert.equal(got.join(''), 'partial');
    return `${e.constructor.name}: ${e.message}`;
  }
  assert.fail(`no error; text ${got.join('')}`);
}

async function quota(mode) {
  const limited = new Anthropic({ baseURL: args['base-url'], apiKey: LIMITED_KEY, maxRetries: 0, timeout: 15000 });
  for (let attempt = 1; attempt <= 3; attempt++) {
    try {
      await limited.messages.create({ model: MODELS[mode], max_tokens: 10, messages: user('[scenario:text] hi') });
    } catch (e) {
      assert.ok(e instanceof Anthropic.RateLimitError, `${e?.constructor?.name} ${e?.status}`);
      assert.equal(e.error.error.type, 'rate_limit_error');
      assert.equal(e.headers.get('x-should-retry'), 'false');
      const wait = e.headers.get('retry-after');
      assert.ok(/^[0-9]+$/.test(wait) && +wait >= 1 && +wait <= 60, `retry-after ${wait}`);
      return `after ${attempt} requests, retry-after ${wait}`;
    }
  }
  assert.fail('no 429 in 3 requests');
}

async function countTokens(mode) {
  const params = { model: MODELS[mode], messages: user('count these four words') };
  if (mode === 'native') {
    assert.equal((await client.messages.countTokens(params)).input_tokens, 44);
    assert.equal((await lastSent(mode)).path, '/v1/messages/count_tokens');
    return null;
  }
  try {
    await client.messages.countTokens(params);
  } catch (e) {
    assert.ok(e instanceof Anthropic.NotFoundError, `${e?.constructor?.name}`);
    assert.equal(e.error.error.type, 'not_found_error');
    return e.message;
  }
  assert.fail('no NotFoundError');
}

async function auth(mode) {
  const wrong = new Anthropic({ baseURL: args['base-url'], apiKey: 'sk-wrong', maxRetries: 0 });
  await assert.rejects(wrong.messages.create({ model: MODELS[mode], max_tokens: 10, messages: user('[scenario:text] hi') }),
    (e) => e instanceof Anthropic.AuthenticationError && e.error.error.type === 'authentication_error');
  const bearer = new Anthropic({ baseURL: args['base-url'], apiKey: null, authToken: CLIENT_KEY, maxRetries: 0 });
  const msg = await bearer.messages.create({ model: MODELS[mode], max_tokens: 10, messages: user('[scenario:text] hi') });
  assert.equal(msg.content[0].text, 'Hello from the mock.');
  const { headers } = await lastSent(mode);
  assert.ok(!JSON.stringify(headers).includes(CLIENT_KEY), 'the client key reached the backend');
  if (mode === 'translate') assert.equal(headers.authorization, 'Bearer sk-chat-backend');
  else assert.deepEqual([headers['x-api-key'], headers.authorization], ['sk-native-backend', undefined], 'apiKeyHeader x-api-key');
}

console.log(`@anthropic-ai/sdk ${version} -> ${args['base-url']}`);
await check("models.list in Anthropic's shape, models.retrieve; HEAD /api/hello", modelsList);
for (const mode of ['native', 'translate']) {
  for (const stream of [false, true]) {
    const at = `(${mode}, stream=${stream})`;
    await check(`text ${at}`, () => textCheck(mode, stream));
    await check(`system blocks ${at}`, () => systemCheck(mode, stream));
    await check(`images, base64 and url ${at}`, () => imageCheck(mode, stream));
    await check(`two-turn tool loop, arguments split over 12 chunks ${at}`, () => toolLoop(mode, stream, true));
    await check(`two-turn tool loop, arguments in one chunk ${at}`, () => toolLoop(mode, stream, false));
    await check(`tool_choice tool ${at}`, () => toolChoice(mode, stream, { type: 'tool', name: 'get_weather', disable_parallel_tool_use: true }));
    await check(`tool_choice any ${at}`, () => toolChoice(mode, stream, { type: 'any' }));
    await check(`stop_sequences ${at}`, () => stopSequences(mode, stream));
    await check(`thinking ${at}`, () => thinking(mode, stream));
    await check(`ledger lines exact ${at}`, () => ledgerCheck(mode, stream));
    await check(`aliases: claude-… ids land on a local model ${at}`, () => aliasCheck(mode, stream));
  }
  await check(`an error mid-stream (${mode})`, () => errorMidStream(mode));
  await check(`count_tokens (${mode})`, () => countTokens(mode));
  await check(`x-api-key and Bearer client auth (${mode})`, () => auth(mode));
  await check(`quota 429: RateLimitError with retry-after and x-should-retry false (${mode})`, () => quota(mode));
}
if (failures.length) {
  console.log(`${failures.length} of ${count} checks FAILED: ${failures.join(', ')}`);
  process.exit(1);
}
console.log(`all ${count} checks passed`);
