// The exposition checker must catch each problem on crafted input, and must
// pass clean input (including prom-client's own output) untouched.
import t from 'tap';
import { Registry, Counter, Gauge, Histogram, Summary } from 'prom-client';
import { checkExposition, parseExposition, sampleValue, sumSamples } from '../helpers/exposition.js';

const clean = `# HELP probepilot_tc_bytes_total Bytes seen by TC, "quoted" \\\\ and \\n escaped.
# TYPE probepilot_tc_bytes_total counter
probepilot_tc_bytes_total{pod="a",direction="ingress"} 1024
probepilot_tc_bytes_total{direction="egress",pod="a"} 2048 1700000000000
probepilot_tc_bytes_total{pod="caf\u00e9 \u{1F600}",direction="egress",note="say \\"hi\\"\\nback\\\\slash"} 1e3
# TYPE probepilot_up gauge
probepilot_up NaN
# a free comment
probepilot_up_untyped_sibling 1
# HELP probepilot_runq_latency_seconds Run queue latency.
# TYPE probepilot_runq_latency_seconds histogram
probepilot_runq_latency_seconds_bucket{pod="a",le="0.001"} 1
probepilot_runq_latency_seconds_bucket{pod="a",le="0.01"} 3
probepilot_runq_latency_seconds_bucket{pod="a",le="+Inf"} 4
probepilot_runq_latency_seconds_sum{pod="a"} 0.5
probepilot_runq_latency_seconds_count{pod="a"} 4
probepilot_runq_latency_seconds_bucket{pod="b",le="0.001"} 0
probepilot_runq_latency_seconds_bucket{pod="b",le="+Inf"} 0
probepilot_runq_latency_seconds_sum{pod="b"} 0
probepilot_runq_latency_seconds_count{pod="b"} 0
# TYPE rpc_seconds summary
rpc_seconds{quantile="0.5"} 0.2
rpc_seconds_sum 10
rpc_seconds_count 50
`;

t.test('clean input passes and parses', async (t) => {
  t.same(checkExposition(clean), []);
  t.same(checkExposition(Buffer.from(clean)), [], 'as a Buffer too');
  const families = parseExposition(clean);
  t.same(
    families.map((f) => [f.name, f.type]),
    [
      ['probepilot_tc_bytes_total', 'counter'],
      ['probepilot_up', 'gauge'],
      ['probepilot_up_untyped_sibling', 'untyped'],
      ['probepilot_runq_latency_seconds', 'histogram'],
      ['rpc_seconds', 'summary'],
    ],
  );
  t.equal(families[0]?.help, 'Bytes seen by TC, "quoted" \\ and \n escaped.');
  t.equal(sampleValue(families, 'probepilot_tc_bytes_total', { pod: 'a', direction: 'ingress' }), 1024);
  t.equal(sampleValue(families, 'probepilot_tc_bytes_total', { pod: 'caf\u00e9 \u{1F600}' }), 1000, 'UTF-8 label values decode');
  t.equal(sampleValue(families, 'probepilot_tc_bytes_total', { note: 'say "hi"\nback\\slash' }), 1000, 'escapes decode');
  t.equal(sampleValue(families, 'probepilot_tc_bytes_total', { pod: 'nope' }), undefined);
  t.throws(() => sampleValue(families, 'probepilot_tc_bytes_total', { pod: 'a' }), /2 series match/, 'ambiguous lookups are errors');
  t.ok(Number.isNaN(sampleValue(families, 'probepilot_up')));
  t.equal(sumSamples(families, 'probepilot_tc_bytes_total'), 4072);
  t.equal(sumSamples(families, 'probepilot_tc_bytes_total', { direction: 'egress' }), 3048);
  t.equal(sumSamples(families, 'probepilot_tc_bytes_total', { pod: /^caf/ }), 1000);
  t.equal(sumSamples(families, 'probepilot_runq_latency_seconds_count'), 4);
  const tc = families[0]?.samples[1];
  t.equal(tc?.timestamp, 1700000000000);
});

t.test('prom-client output passes', async (t) => {
  const registry = new Registry();
  const counter = new Counter({ name: 'pp_events_total', help: 'h', labelNames: ['pod'], registers: [registry] });
  counter.inc({ pod: 'a\\b"c\nd' }, 3);
  counter.inc({ pod: 'plain' });
  new Gauge({ name: 'pp_gauge', help: 'h', registers: [registry] }).set(-2.5);
  const histogram = new Histogram({ name: 'pp_latency_seconds', help: 'h', labelNames: ['pod'], buckets: [0.001, 0.1, 1], registers: [registry] });
  histogram.observe({ pod: 'a' }, 0.05);
  histogram.observe({ pod: 'a' }, 5);
  new Summary({ name: 'pp_summary', help: 'h', registers: [registry] }).observe(1);
  const text = await registry.metrics();
  t.same(checkExposition(text), []);
  const families = parseExposition(text);
  t.equal(sampleValue(families, 'pp_events_total', { pod: 'a\\b"c\nd' }), 3);
  t.equal(sampleValue(families, 'pp_latency_seconds_bucket', { pod: 'a', le: '0.1' }), 1);
  t.equal(sampleValue(families, 'pp_latency_seconds_bucket', { pod: 'a', le: '+Inf' }), 2);
});

/** Each case: an exposition and the problem it must produce. */
const broken: Array<[string, string | Buffer, RegExp]> = [
  ['duplicate series (label order differs)', 'a_total{x="1",y="2"} 1\na_total{y="2",x="1"} 2\n', /line 2: duplicate series a_total\{y="2",x="1"\} \(first at line 1\)/],
  ['duplicate unlabelled series', '# TYPE g gauge\ng 1\ng 2\n', /line 3: duplicate series g/],
  [
    'le not increasing',
    '# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="0.5"} 1\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
    /line 3: histogram h: le 0.5 does not increase after le 1/,
  ],
  ['le repeated', '# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="1.0"} 1\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n', /le 1.0 does not increase/],
  ['missing +Inf bucket', '# TYPE h histogram\nh_bucket{pod="a",le="1"} 1\nh_sum{pod="a"} 1\nh_count{pod="a"} 1\n', /histogram h\{pod="a"\} has no \+Inf bucket/],
  ['+Inf bucket != _count', '# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 3\n', /line 5: histogram h: \+Inf bucket \(2\) != _count \(3\)/],
  ['non-cumulative buckets', '# TYPE h histogram\nh_bucket{le="1"} 5\nh_bucket{le="2"} 3\nh_bucket{le="+Inf"} 5\nh_sum 1\nh_count 5\n', /line 3: histogram h: buckets are not cumulative/],
  ['missing _count', '# TYPE h histogram\nh_bucket{le="+Inf"} 1\nh_sum 1\n', /histogram h has no _count/],
  ['bucket without le', '# TYPE h histogram\nh_bucket 1\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n', /line 2: bucket h_bucket has no valid le label/],
  ['NaN bucket', '# TYPE h histogram\nh_bucket{le="+Inf"} NaN\nh_sum 1\nh_count 1\n', /histogram bucket h_bucket\{le="\+Inf"\} must be a non-negative number/],
  ['stray sample in a histogram', '# TYPE h histogram\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\nh 3\n', /sample h in histogram h is not a _bucket/],
  ['invalid UTF-8 (a character cut in half)', Buffer.concat([Buffer.from('c_total{comm="caf'), Buffer.from([0xc3]), Buffer.from('"} 1\n')]), /line 1: invalid UTF-8 in value of label comm/],
  ['invalid UTF-8 in HELP', Buffer.concat([Buffer.from('# HELP c_total x'), Buffer.from([0xff, 0xfe]), Buffer.from('\nc_total 1\n')]), /line 1: invalid UTF-8 in HELP of c_total/],
  ['bad escape in a label value', 'c_total{path="C:\\temp"} 1\n', /line 1: bad escape \\t in value of label path/],
  ['unterminated label value', 'c_total{path="abc} 1\n', /line 1: unterminated value of label path/],
  ['HELP declared twice', '# HELP c_total a\n# HELP c_total b\n# TYPE c_total counter\nc_total 1\n', /line 2: HELP for c_total declared twice \(first at line 1\)/],
  ['TYPE declared twice', '# TYPE c_total counter\n# TYPE c_total counter\nc_total 1\n', /line 2: TYPE for c_total declared twice/],
  ['TYPE after samples', 'c_total 1\n# TYPE c_total counter\n', /line 2: TYPE for c_total after its samples \(line 1\)/],
  ['TYPE after histogram samples', 'h_bucket{le="+Inf"} 1\n# TYPE h histogram\nh_sum 1\nh_count 1\n', /line 2: TYPE for h after its samples \(line 1\)/],
  ['HELP after samples', '# TYPE g gauge\ng 1\n# HELP g late\n', /line 3: HELP for g after its samples \(line 2\)/],
  ['negative counter', '# TYPE c_total counter\nc_total{pod="a"} -1\n', /line 2: counter c_total\{pod="a"\} is negative \(-1\)/],
  ['NaN counter', '# TYPE c_total counter\nc_total NaN\n', /line 2: counter c_total is NaN/],
  ['NaN summary count', '# TYPE s summary\ns_count NaN\ns_sum 1\n', /summary count s_count must be a non-negative number/],
  ['family split in two blocks', '# TYPE a gauge\na{x="1"} 1\n# TYPE b gauge\nb 1\na{x="2"} 1\n', /line 5: lines of family a are not contiguous/],
  ['unparseable value', 'g 1,5\n', /line 1: invalid value/],
  ['label given twice', 'g{a="1",a="2"} 1\n', /line 1: label a given twice/],
  ['reserved label name', 'g{__name__="x"} 1\n', /line 1: label name __name__ is reserved/],
  ['unknown TYPE', '# TYPE g gauges\ng 1\n', /line 1: unknown TYPE "gauges" for g/],
];

t.test('each problem is detected', async (t) => {
  for (const [what, input, expected] of broken) {
    const problems = checkExposition(input);
    t.ok(
      problems.some((p) => expected.test(p)),
      what,
      { problems, expected: String(expected) },
    );
  }
});

t.test('parseExposition rejects syntax errors but not semantic ones', async (t) => {
  t.throws(() => parseExposition('c_total{path="C:\\temp"} 1\n'), /invalid exposition:\nline 1: bad escape/);
  t.throws(() => parseExposition(Buffer.from([0x67, 0x7b, 0x61, 0x3d, 0x22, 0xff, 0x22, 0x7d, 0x20, 0x31])), /invalid UTF-8/);
  const dup = parseExposition('g 1\ng 2\n');
  t.equal(dup[0]?.samples.length, 2, 'duplicates parse; checkExposition reports them');
  t.throws(() => sampleValue(dup, 'g'), /2 series match/);
});

t.test('labels named like Object.prototype members are plain data', async (t) => {
  const families = parseExposition('g{constructor="y",toString="z"} 1\n');
  t.same(families[0]?.samples[0]?.labels, { constructor: 'y', toString: 'z' });
  t.equal(sampleValue(families, 'g', { constructor: 'y' }), 1);
  t.match(checkExposition('g{__proto__="x"} 1\n'), [/label name __proto__ is reserved/]);
});
