// Counts a raw TAP stream (tap's --output-file) and prints "PASSED FAILED SKIPPED".
// Each failure is also written to stderr with its subtest path and tap's
// diagnostics, so that a run whose log is only seen by its tail still names
// what failed.
//
// Unit: leaf test points, at any subtest depth. A subtest's own closing test
// point only summarises its children, so it is not counted again — except
// when it has no children (a skipped or todo subtest: one skip) or when it
// failed although none of its children did (non-zero exit, timeout, plan
// mismatch: one failure). todo counts as skipped, never as passed. A stream
// that ends broken (bail out, missing plan, crash) with no failure counted
// yet adds one failure, so a crash can never read as success.
import { readFileSync } from 'node:fs';
import { Parser } from 'tap-parser';

function newNode(parent, name) {
  return { pass: 0, fail: 0, skip: 0, parent, name };
}

function pathOf(node) {
  const names = [];
  for (let n = node; n; n = n.parent) if (n.name) names.unshift(n.name);
  return names.join(' > ');
}

const failures = [];

function recordFailure(node, res) {
  const where = [pathOf(node), res.name].filter(Boolean).join(' > ');
  const diag = res.diag ? JSON.stringify(res.diag) : '';
  failures.push(diag ? `${where}\n    ${diag.slice(0, 2000)}` : where);
}

function add(node, kind) {
  for (let n = node; n; n = n.parent) n[kind]++;
}

function classify(res) {
  if (res.todo || res.skip) return 'skip';
  return res.ok ? 'pass' : 'fail';
}

function watch(parser, node) {
  let lastChild;
  parser.on('child', (childParser) => {
    lastChild = newNode(node, childParser.name);
    watch(childParser, lastChild);
  });
  parser.on('assert', (res) => {
    const child = res.closingTestPoint ? lastChild : undefined;
    const kind = classify(res);
    if (!child || child.pass + child.fail + child.skip === 0) {
      add(node, kind);
      if (kind === 'fail') recordFailure(node, res);
    } else if (kind === 'fail' && child.fail === 0) {
      add(node, 'fail');
      recordFailure(node, res);
    }
  });
}

const file = process.argv[2];
if (!file) {
  console.error('usage: tap-counts.mjs RESULTS.tap');
  process.exit(2);
}
const parser = new Parser();
const root = newNode(undefined);
watch(parser, root);
parser.on('complete', (results) => {
  const seen = root.pass + root.fail + root.skip;
  if (seen > 0 && !results.ok && root.fail === 0) {
    root.fail = 1;
    failures.push(`the TAP stream ended broken: ${JSON.stringify(results.failures ?? []).slice(0, 2000)}`);
  }
  if (failures.length > 0) {
    console.error(`${failures.length} failure(s):`);
    for (const failure of failures) console.error(`  not ok: ${failure}`);
  }
  console.log(`${root.pass} ${root.fail} ${root.skip}`);
});
parser.end(readFileSync(file, 'utf8'));
