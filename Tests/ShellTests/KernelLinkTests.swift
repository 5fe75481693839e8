import CLinux
import Cluster
import ControlProtocol
import NodeMap
import Testing
import Glibc

@testable import discd

/// The daemon's side of the kernel modules: `/dev/heartbeat` records as the module writes them
/// (struct heartbeat_exit of kernel/include/uapi/discd_heartbeat.h), the map text fdmod reads, the
/// `kernel` control request, and configuration changes as `discd.config` stream events.
@Suite struct KernelLinkTests {
    func record(pid: UInt32, tag: UInt16, status: Int32, lost: UInt32, startNs: UInt64) -> [UInt8] {
        var r = heartbeat_exit()
        r.pid = pid
        r.tag = tag
        r.status = status
        r.lost = lost
        r.start_ns = startNs
        r.exit_ns = startNs + 5
        return withUnsafeBytes(of: &r) { Array($0) }
    }

    @Test func recordsDecode() {
        #expect(KernelLink.recordSize == 32 && MemoryLayout<heartbeat_exit>.size == 32)
        let bytes = record(pid: 4242, tag: 7, status: 9, lost: 0, startNs: 12_340_000_000)
            + record(pid: 17, tag: 65535, status: 3 << 8, lost: 5, startNs: 990_000_000)
        // 100 ticks per second: 12.34 s since boot is tick 1234, as /proc/PID/stat would say.
        let exits = KernelLink.parse(bytes[...], ticksPerSecond: 100)
        #expect(exits == [
            KernelLink.Exit(pid: 4242, tag: 7, status: 9, startTicks: 1234, lost: 0),
            KernelLink.Exit(pid: 17, tag: 65535, status: 3 << 8, startTicks: 99, lost: 5),
        ])
        // A partial record at the end is not decoded (the module returns whole records only).
        #expect(KernelLink.parse(bytes[0..<40], ticksPerSecond: 100).count == 1)
        #expect(KernelLink.parse([][...], ticksPerSecond: 100).isEmpty)
    }

    @Test func fdmodMapTextNamesSelfThenEveryNode() {
        var map = NodeMap()
        let me = IPAddress("10.1.3.2")!
        for a in ["10.1.3.1", "10.1.3.2", "fd00::7"] {
            _ = map.observe(NodeClaim(address: IPAddress(a)!), now: Instant(nanos: 0))
        }
        let text = KernelLink.mapText(map, me: me)
        let lines = text?.split(separator: "\n").map(String.init) ?? []
        #expect(lines.first == "self 770")
        #expect(Set(lines.dropFirst()) == Set(map.nodes.map { "\($0.id.rawValue) \($0.address)" }))
        #expect(lines.count == 4)
        // Not in the map yet: nothing to write.
        #expect(KernelLink.mapText(map, me: IPAddress("10.9.9.9")!) == nil)
    }

    @Test func kernelControlRequest() throws {
        #expect(try ControlRequest.parse(#"{"op":"kernel"}"#) == .kernel(attach: nil))
        #expect(try ControlRequest.parse(#"{"op":"kernel","attach":false}"#) == .kernel(attach: false))
        #expect(throws: ControlRequest.Invalid.self) { try ControlRequest.parse(#"{"op":"kernel","attach":"no"}"#) }
    }

    @Test func configurationChangesAreStreamEvents() {
        let up = DaemonEvent.rdmaUp(device: "rxe0", port: 1, gid: "::ffff:10.0.2.15", qpn: 17, qkey: 0x0123_4567, mtu: 1024)
        #expect(up.streamItem?.space == .config && up.streamItem?.name == "RDMA_UP" && up.streamItem?.severity == .info)
        let down = DaemonEvent.rdmaDown(reason: "device removed", wasUp: true)
        #expect(down.streamItem?.name == "RDMA_DOWN" && down.streamItem?.severity == .warning)
        // Still down (a retry found no device), or never up: no change to report.
        #expect(DaemonEvent.rdmaDown(reason: "no RDMA device", wasUp: false).streamItem == nil)
        #expect(DaemonEvent.kernelDetached(reason: "x").streamItem?.name == "KERNEL_DETACHED")
        #expect(DaemonEvent.kernelAttached(device: "/dev/heartbeat").streamItem?.name == "KERNEL_ATTACHED")
        #expect(DaemonEvent.watching(pid: 1, tag: 0, name: "x").streamItem == nil)
    }
}

/// `--allow-from`: CIDRs of both families, parsed strictly, matched on the 128-bit form.
@Suite struct SourceAllowListTests {
    @Test func matchesPrefixesOfBothFamilies() throws {
        let l = try SourceAllowList(parsing: "10.1.0.0/16, 192.168.7.9,fd00:1::/32")
        #expect(l.contains(IPAddress("10.1.255.3")!) && !l.contains(IPAddress("10.2.0.1")!))
        #expect(l.contains(IPAddress("192.168.7.9")!) && !l.contains(IPAddress("192.168.7.8")!))
        #expect(l.contains(IPAddress("fd00:1:ffff::1")!) && !l.contains(IPAddress("fd00:2::1")!))
        // An IPv4 prefix never matches an IPv6 address and the other way round.
        #expect(!l.contains(IPAddress("::a01:1")!))
        #expect(try SourceAllowList(parsing: "0.0.0.0/0").contains(IPAddress("8.8.8.8")!))
        #expect(!(try SourceAllowList(parsing: "0.0.0.0/0").contains(IPAddress("fe80::1")!)))
    }

    @Test func badListsAreRefused() {
        for bad in ["", ",", "10.1.0.0/33", "10.1.0.1/16", "nonsense", "fd00::/129", "10.0.0.0/x"] {
            #expect(throws: ConfigError.self, "\(bad)") { try SourceAllowList(parsing: bad) }
        }
    }
}
