"""Check that no line of a code cell in `nbs/*.ipynb` is over 120 characters.
Lists `notebook: cell id: line` for each long line and exits 1, else prints how many lines it checked."""
import json, sys
from pathlib import Path

MAX = 120

def long_lines(nb_path, limit=MAX):
    "Yield (cell id, line) for each code-cell line of `nb_path` over `limit` characters"
    nb = json.loads(Path(nb_path).read_text(encoding='utf-8'))
    for i, cell in enumerate(nb.get('cells', [])):
        if cell.get('cell_type') != 'code': continue
        src = cell.get('source', '')
        src = ''.join(src) if isinstance(src, list) else src
        for line in src.splitlines():
            if len(line) > limit: yield cell.get('id', f'#{i}'), line

def main(root=None):
    root = Path(root) if root else Path(__file__).resolve().parent.parent
    nbs = sorted((root/'nbs').glob('*.ipynb'))
    bad, n = 0, 0
    for p in nbs:
        nb = json.loads(p.read_text(encoding='utf-8'))
        for cell in nb.get('cells', []):
            if cell.get('cell_type') != 'code': continue
            src = cell.get('source', '')
            n += len((''.join(src) if isinstance(src, list) else src).splitlines())
        for cid, line in long_lines(p):
            bad += 1
            print(f'{p.name}: {cid}: {line}')
    if bad:
        print(f'{bad} code-cell lines over {MAX} characters in {len(nbs)} notebooks', file=sys.stderr)
        return 1
    print(f'checked {n} code-cell lines in {len(nbs)} notebooks: none over {MAX} characters')
    return 0

if __name__ == '__main__': sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else None))
