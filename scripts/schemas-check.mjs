// Checks schemas/ with the reference tools outside Go:
//   - schemas/asyncapi.yaml with @asyncapi/parser (the AsyncAPI reference
//     parser): the document, and every payload schema it references, must
//     parse without an error or a warning;
//   - every schemas/**/*.schema.json with ajv in strict mode (draft
//     2020-12, formats checked): each must compile with no strict-mode
//     complaint (missing "type" beside "properties", unknown keywords or
//     formats, …).
//
// Usage: node scripts/schemas-check.mjs SCHEMA_DIR NODE_MODULES_DIR
// (scripts/setup/tools.sh installs the packages; messages/schemas_node_test.go
// runs this). Prints one line per problem and exits 1 when there is one.
import { createRequire } from 'node:module';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';

const [dir, modules] = process.argv.slice(2).map((p) => resolve(p));
if (!dir || !modules) {
	console.error('usage: node schemas-check.mjs SCHEMA_DIR NODE_MODULES_DIR');
	process.exit(2);
}
const require = createRequire(join(modules, 'noop.js'));
let problems = 0;
const problem = (msg) => {
	problems++;
	console.log(msg);
};

// AsyncAPI: the reference parser, which also validates each payload
// schema (in the document's default schema format, AsyncAPI Schema).
const { Parser, fromFile } = require('@asyncapi/parser');
const severity = ['error', 'warning', 'info', 'hint'];
const { document, diagnostics } = await fromFile(new Parser(), join(dir, 'asyncapi.yaml')).parse();
for (const d of diagnostics) {
	const line = `asyncapi.yaml: ${severity[d.severity]} ${d.code} at ${d.path.join('.') || '(root)'}: ${d.message}`;
	if (d.severity <= 1) {
		problem(line);
	} else {
		console.log(line);
	}
}
if (!document) {
	problem('asyncapi.yaml: the parser returned no document');
} else {
	const payloads = document.allMessages().all().filter((m) => m.hasPayload()).length;
	console.log(`asyncapi.yaml: ${document.version()}, ${document.allMessages().length} messages, ${payloads} payloads checked`);
}

// JSON Schemas: ajv strict, draft 2020-12. Every file gets an $id from
// its path, so relative $refs between files resolve as they do on disk.
const Ajv2020 = require('ajv/dist/2020').default;
const addFormats = require('ajv-formats').default;
const ajv = new Ajv2020({ strict: true, allErrors: true, logger: false });
addFormats(ajv);
const files = [];
const walk = (d) => {
	for (const e of readdirSync(d, { withFileTypes: true })) {
		const p = join(d, e.name);
		if (e.isDirectory()) walk(p);
		else if (e.name.endsWith('.schema.json')) files.push(p);
	}
};
walk(dir);
const idOf = (p) => 'file:///schemas/' + relative(dir, p).split('\\').join('/');
for (const f of files) {
	try {
		const s = JSON.parse(readFileSync(f, 'utf8'));
		ajv.addSchema({ ...s, $id: idOf(f) });
	} catch (e) {
		problem(`${relative(dir, f)}: ${e.message}`);
	}
}
for (const f of files) {
	try {
		ajv.getSchema(idOf(f));
	} catch (e) {
		problem(`${relative(dir, f)}: ${e.message}`);
	}
}
console.log(`${files.length} JSON Schemas compiled by ajv (strict, draft 2020-12)`);
process.exit(problems > 0 ? 1 : 0);
