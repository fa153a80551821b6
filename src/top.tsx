// probepilot top: the live full-screen view (ink) of GET /api/v1/workloads,
// refreshed every interval, with sort and filter keys. It keeps the last
// rows and retries when an agent does not answer, follows resizes, and
// leaves the terminal as it found it (the alternate screen) on q or Ctrl-C.
import { useEffect, useRef, useState } from 'react';
import { Box, render, Text, useApp, useInput, useWindowSize } from 'ink';
import type { WorkloadSort } from './api/service.js';
import { fitTable, nextSort, sortHeader, summaryLine, visibleRows, type TopSnapshot } from './top-view.js';

export interface TopOptions {
  /** What is asked (an agent URL, or the cluster's Service), for the title line. */
  source: string;
  intervalSeconds: number;
  sort: WorkloadSort;
  /** One refresh; rejects when no agent answered. */
  fetch: (sort: WorkloadSort) => Promise<TopSnapshot>;
}

const keysHelp = 's/S sort  / filter  q quit';

function TopApp({ options }: { options: TopOptions }) {
  const { exit } = useApp();
  const { columns: width, rows: height } = useWindowSize();
  const [snapshot, setSnapshot] = useState<TopSnapshot>();
  const [error, setError] = useState<string>();
  const [updated, setUpdated] = useState<string>('');
  const [sort, setSort] = useState(options.sort);
  const [filter, setFilter] = useState('');
  /** The filter being typed after `/`; undefined when not typing. */
  const [typing, setTyping] = useState<string>();
  // The refresh loop asks with the sort of the moment, not the one it started with.
  const currentSort = useRef(sort);
  currentSort.current = sort;

  useEffect(() => {
    let stopped = false;
    let timer: NodeJS.Timeout | undefined;
    const refresh = async (): Promise<void> => {
      try {
        const next = await options.fetch(currentSort.current);
        if (stopped) return;
        setSnapshot(next);
        setError(undefined);
        setUpdated(new Date().toLocaleTimeString('en-GB'));
      } catch (err) {
        if (!stopped) setError(err instanceof Error ? err.message : String(err));
      }
      if (!stopped) timer = setTimeout(() => void refresh(), options.intervalSeconds * 1000);
    };
    void refresh();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }, [options]);

  useInput((input, key) => {
    if (key.ctrl || key.meta) return;
    // Keys typed quickly (or pasted) arrive together in one input: each character counts, Enter and Esc among them.
    const chars = key.return ? ['\r'] : key.escape ? ['\x1b'] : key.backspace || key.delete ? ['\x7f'] : [...input];
    let typingNow = typing;
    let filterNow = filter;
    let sortNow = sort;
    for (const char of chars) {
      if (typingNow !== undefined) {
        if (char === '\r' || char === '\n') [filterNow, typingNow] = [typingNow, undefined];
        else if (char === '\x1b') [filterNow, typingNow] = ['', undefined];
        else if (char === '\x7f' || char === '\b') typingNow = typingNow.slice(0, -1);
        else if (char >= ' ') typingNow += char;
      } else if (char === 'q') return exit();
      else if (char === 's' || char === 'S') sortNow = nextSort(sortNow, char === 's' ? 1 : -1);
      else if (char === '/') typingNow = filterNow;
      else if (char === '\x1b') filterNow = '';
    }
    setTyping(typingNow);
    setFilter(filterNow);
    setSort(sortNow);
  });

  const shownFilter = typing ?? filter;
  const rows = visibleRows(snapshot?.workloads ?? [], sort, shownFilter);
  const notices = [
    ...(error ? [{ text: `error: ${error}; retrying every ${options.intervalSeconds} s`, color: 'red' }] : []),
    ...(snapshot?.unreachable ?? []).map((u) => ({ text: `unreachable: ${u.node} (${u.url}): ${u.error}`, color: 'yellow' })),
  ];
  // The frame fills the screen: title, notices, the table's header and rows, summary, footer.
  const room = Math.max(0, height - notices.length - 4);
  const table = fitTable(rows.slice(0, room), sort, width);
  const [header = '', ...lines] = table.lines;
  const marked = table.sortedHeader;
  const footer =
    typing !== undefined
      ? `filter: ${typing}_   (Enter keeps it, Esc clears it)`
      : `${keysHelp}   sort: ${sortHeader(sort)}${filter ? `   filter: ${filter}` : ''}${table.dropped.length ? `   ${table.dropped.length} columns hidden` : ''}`;
  const clip = (text: string) => text.slice(0, width);
  return (
    <Box flexDirection="column" width={width} height={height}>
      <Text bold wrap="truncate">
        {clip(`probepilot top  ${options.source}  every ${options.intervalSeconds} s  ${updated}`)}
      </Text>
      {notices.map((n, i) => (
        <Text key={i} color={n.color} wrap="truncate">
          {clip(n.text)}
        </Text>
      ))}
      <Box flexDirection="column" flexGrow={1}>
        <Text wrap="truncate">
          {marked ? header.slice(0, marked.start) : header}
          {marked ? <Text inverse>{header.slice(marked.start, marked.start + marked.length)}</Text> : null}
          {marked ? header.slice(marked.start + marked.length) : null}
        </Text>
        {lines.map((line, i) => (
          <Text key={i} wrap="truncate">
            {line}
          </Text>
        ))}
      </Box>
      <Text dimColor wrap="truncate">
        {snapshot ? clip(`${summaryLine(snapshot, rows.length)}${rows.length > room ? `; ${rows.length - room} below` : ''}`) : 'waiting for the first answer…'}
      </Text>
      <Text wrap="truncate">{clip(footer)}</Text>
    </Box>
  );
}

/** Runs until q or Ctrl-C; the terminal's own screen is back when it resolves. */
export async function runTop(options: TopOptions): Promise<void> {
  // interactive: stdout is a terminal (the caller checked); ink would otherwise guess from CI variables.
  const app = render(<TopApp options={options} />, { alternateScreen: true, interactive: true, exitOnCtrlC: true, patchConsole: false });
  await app.waitUntilExit();
}
