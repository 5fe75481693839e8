import Glibc
import MapStore
import NodeMap
import Testing

@testable import discd

/// The map file the last run left: its incarnation is the only thing trusted, and only if it
/// validates; a corrupt one is set aside; a killed writer's temporary files are removed.
@Suite struct PreviousMapFileTests {
    func scratch() -> String {
        var t = Array("/tmp/discd-prevmap-XXXXXX".utf8CString)
        let p = t.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        return String(cString: p!)
    }

    func write(_ bytes: [UInt8], _ path: String) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }

    @Test func incarnationOnlyFromAWholeFile() throws {
        let dir = scratch()
        let path = dir + "/discd.map"
        let me = IPAddress("10.1.3.2")!
        #expect(PreviousMapFile.inspect(path: path, me: me).incarnation == nil)
        #expect(PreviousMapFile.inspect(path: path, me: me).problem == nil)   // absent: a first start

        var map = NodeMap()
        _ = map.observe(NodeClaim(address: me, incarnation: 4242), now: Instant(nanos: 0))
        try MapFile.write(MapSnapshot(map: map, writtenAt: Instant(nanos: 1), selfAddress: me), to: path)
        let whole = PreviousMapFile.inspect(path: path, me: me)
        #expect(whole.incarnation == 4242 && whole.problem == nil)
        #expect(DiscdCommand.startIncarnation(wallNanos: 1_000_000, previous: whole.incarnation) == 4243)
        #expect(DiscdCommand.startIncarnation(wallNanos: 9_000_000_000, previous: whole.incarnation) == 9000)

        // One bit flipped: not trusted, and set aside.
        var bytes = try AtomicFile.read(path: path, limit: 1 << 20).bytes
        bytes[bytes.count / 2] ^= 0x10
        write(bytes, path)
        let bad = PreviousMapFile.inspect(path: path, me: me)
        #expect(bad.incarnation == nil && bad.problem != nil)
        #expect(PreviousMapFile.setAside(path) == path + ".corrupt")
        #expect(access(path, F_OK) != 0 && access(path + ".corrupt", F_OK) == 0)
        unlink(path + ".corrupt")
        rmdir(dir)
    }

    @Test func staleTemporariesOfDeadWritersOnly() {
        let dir = scratch()
        let path = dir + "/discd.map"
        // A pid that has exited (a reaped child) and one that runs (ourselves is skipped, so init).
        let child = fork()
        if child == 0 { _exit(0) }
        var st: Int32 = 0
        _ = waitpid(child, &st, 0)
        write([1, 2, 3], path + ".tmp.\(child)")
        write([1, 2, 3], path + ".tmp.1")
        write([1, 2, 3], path + ".tmp.notapid")
        write([1, 2, 3], dir + "/other.map.tmp.\(child)")
        #expect(PreviousMapFile.removeStaleTemporaries(of: path) == 1)
        #expect(access(path + ".tmp.\(child)", F_OK) != 0)
        #expect(access(path + ".tmp.1", F_OK) == 0)
        #expect(access(path + ".tmp.notapid", F_OK) == 0)
        #expect(access(dir + "/other.map.tmp.\(child)", F_OK) == 0)
        for f in [path + ".tmp.1", path + ".tmp.notapid", dir + "/other.map.tmp.\(child)"] { unlink(f) }
        rmdir(dir)
    }
}
