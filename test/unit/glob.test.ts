import t from 'tap';
import { globMatcher, globToRegExp } from '../../src/glob.js';

t.test('globs', async (t) => {
  t.ok(globToRegExp('veth*').test('veth1234'));
  t.notOk(globToRegExp('veth*').test('xveth'));
  t.ok(globToRegExp('eth?').test('eth0'));
  t.notOk(globToRegExp('eth?').test('eth10'));
  t.ok(globToRegExp('br-[0-9a-f]*').test('br-3a'));
  t.notOk(globToRegExp('br-[!0-9]*').test('br-3a'));
  t.ok(globToRegExp('a.b').test('a.b'));
  t.notOk(globToRegExp('a.b').test('axb'), 'dots are literal');
  t.ok(globToRegExp('x[').test('x['), 'an unclosed bracket is literal');
});

t.test('exclude wins over include', async (t) => {
  const wanted = globMatcher(['veth*', 'eth*'], ['veth-skip*']);
  t.ok(wanted('veth1'));
  t.ok(wanted('eth0'));
  t.notOk(wanted('veth-skip1'));
  t.notOk(wanted('lo'));
});
