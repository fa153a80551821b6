// Shell-style globs for interface names: * ? and [set] (with ! or ^ to negate).
export function globToRegExp(glob: string): RegExp {
  let source = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*') source += '.*';
    else if (c === '?') source += '.';
    else if (c === '[') {
      const end = glob.indexOf(']', i + 2);
      if (end < 0) source += '\\[';
      else {
        let set = glob.slice(i + 1, end).replaceAll('\\', '\\\\');
        if (set.startsWith('!')) set = `^${set.slice(1)}`;
        source += `[${set}]`;
        i = end;
      }
    } else source += c.replace(/[.+^${}()|\\/]/g, '\\$&');
  }
  return new RegExp(`^${source}$`);
}

export function globMatcher(include: readonly string[], exclude: readonly string[]): (name: string) => boolean {
  const inc = include.map(globToRegExp);
  const exc = exclude.map(globToRegExp);
  return (name) => inc.some((r) => r.test(name)) && !exc.some((r) => r.test(name));
}
