// The agent's version, from package.json (also what OTLP resources and the CLI report).
import { readFileSync } from 'node:fs';

export const agentVersion: string = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
