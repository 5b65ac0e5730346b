// Runs a machine whose vIOMMU's host side is the recording TEST DOUBLE (test/helpers/recording-iommu-host.ts),
// so a real guest driver can put devices behind the virtio-iommu before the host side exists; their
// DMA still reaches all of guest RAM 1:1, so only guests that do no DMA with them belong here.
// Serial goes to stdout; at the end one stderr line "viommu-host: {calls, violations, viommu}".
//   node dist/test/helpers/viommu-child.js CONFIG.json
import { createMachine, loadConfig } from '../../machine/index.js';
import { RecordingIommuHost } from './recording-iommu-host.js';

const config = loadConfig(process.argv[2]!);
const host = new RecordingIommuHost();
const m = await createMachine(config, { iommuHost: host, serialOutput: (b) => process.stdout.write(b) });
try {
  const r = await m.run();
  const report = { calls: host.calls, violations: host.violations, viommu: m.inspect().viommu };
  process.stderr.write(`tsvmm: ${r.reason}\nviommu-host: ${JSON.stringify(report)}\n`);
  process.exitCode = r.status;
} finally {
  m.close();
}
