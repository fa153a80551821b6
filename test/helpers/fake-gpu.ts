// A fake NVML and a fake DCGM (test/fixtures/gpu/fake-*.c) built for a test:
// shared libraries the agent dlopens like libnvidia-ml.so.1 and libdcgm.so.4,
// answering from state files the test rewrites whenever it wants them to say
// something else.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Test } from 'tap';
import { projectRoot } from './helm.js';
import { compileWorkload } from './workload.js';

export interface FakeGpu {
  uuid: string;
  name: string;
  fields?: Record<string, number>;
}
export interface FakeState {
  init?: number;
  driver?: string;
  gpus: FakeGpu[];
  processes?: Array<{ gpu: number; pid: number; bytes: number; sm: number; mem: number }>;
  xids?: Array<{ gpu: number; xid: number; total: number }>;
}

function stateText(state: FakeState): string {
  return [
    ...(state.init !== undefined ? [`init ${state.init}`] : []),
    `driver ${state.driver ?? '550.54.15'}`,
    ...state.gpus.map((g, i) => `device ${i} uuid=${g.uuid} name=${g.name} ${Object.entries(g.fields ?? {}).map(([k, v]) => `${k}=${v}`).join(' ')}`),
    ...(state.processes ?? []).map((p) => `process ${p.gpu} ${p.pid} ${p.bytes} ${p.sm} ${p.mem}`),
    ...(state.xids ?? []).map((x) => `xid ${x.gpu} ${x.xid} ${x.total}`),
  ].join('\n') + '\n';
}

export interface FakeNvml {
  library: string;
  write(state: FakeState): void;
}

/**
 * Builds the fixture's library under the real library's name and a state file
 * whose path goes into this process's environment as stateVariable (agents
 * inherit it); resolves with the library's path and the state file's.
 */
async function buildFake(t: Test, fixture: string, libraryName: string, stateVariable: string): Promise<{ library: string; stateFile: string }> {
  const source = readFileSync(path.join(projectRoot, 'test/fixtures/gpu', fixture), 'utf8');
  const library = await compileWorkload(t, libraryName, source, ['-shared', '-fPIC']);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pp-gpu-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const stateFile = path.join(dir, 'state');
  writeFileSync(stateFile, '');
  process.env[stateVariable] = stateFile;
  return { library, stateFile };
}

export async function fakeNvml(t: Test): Promise<FakeNvml> {
  const { library, stateFile } = await buildFake(t, 'fake-nvml.c', 'libnvidia-ml.so.1', 'FAKE_NVML_STATE');
  return { library, write: (state) => writeFileSync(stateFile, stateText(state)) };
}

export interface FakeDcgmState {
  /** dcgmInit's answer. */
  init?: number;
  /** dcgmWatchFields' answer for the profiling fields (e.g. -37: module not loaded). */
  profiling?: number;
  /** DCGM GPU id, UUID and DCGM_FI_PROF_* values by field id. */
  gpus: Array<{ id: number; uuid: string; fields: Record<number, number> }>;
}

export interface FakeDcgm {
  library: string;
  write(state: FakeDcgmState): void;
}

export async function fakeDcgm(t: Test): Promise<FakeDcgm> {
  const { library, stateFile } = await buildFake(t, 'fake-dcgm.c', 'libdcgm.so.4', 'FAKE_DCGM_STATE');
  const text = (state: FakeDcgmState) =>
    [
      ...(state.init !== undefined ? [`init ${state.init}`] : []),
      ...(state.profiling !== undefined ? [`profiling ${state.profiling}`] : []),
      ...state.gpus.map((g) => `gpu ${g.id} uuid=${g.uuid} ${Object.entries(g.fields).map(([k, v]) => `${k}=${v}`).join(' ')}`),
    ].join('\n') + '\n';
  return { library, write: (state) => writeFileSync(stateFile, text(state)) };
}
