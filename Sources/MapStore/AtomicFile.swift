import Glibc
import NodeMap

/// The project's one atomic file writer and bounded reader (map file, status file).
public enum AtomicFile {
    public struct Failure: Error, Equatable, CustomStringConvertible {
        public var path: String
        public var operation: String
        public var errno: Int32
        public var description: String { "\(path): \(operation) failed: \(String(cString: strerror(errno)))" }
    }

    /// Replaces `path` with `bytes` atomically: a temporary file in the same directory, rename over
    /// `path`. With `durable`, the data is fsynced before the rename and the directory after it, so
    /// that after a crash the file is the old one or the new one, never empty or torn.
    public static func write(_ bytes: [UInt8], to path: String, durable: Bool = true) throws(Failure) {
        let tmp = path + ".tmp.\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw Failure(path: tmp, operation: "create", errno: errno) }
        var ok = false
        defer { if !ok { unlink(tmp) } }
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, bytes.count - done) }
            if n < 0 {
                if errno == EINTR { continue }
                let e = errno
                close(fd)
                throw Failure(path: tmp, operation: "write", errno: e)
            }
            done += n
        }
        if durable, fsync(fd) != 0 {
            let e = errno
            close(fd)
            throw Failure(path: tmp, operation: "fsync", errno: e)
        }
        close(fd)
        guard rename(tmp, path) == 0 else { throw Failure(path: path, operation: "rename", errno: errno) }
        ok = true
        if durable {
            let dfd = open(directory(of: path), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if dfd >= 0 {
                _ = fsync(dfd)
                close(dfd)
            }
        }
    }

    /// The whole file (standard input for "-"), at most `limit` bytes.
    public static func read(path: String, limit: Int) throws(Failure) -> (bytes: [UInt8], truncated: Bool) {
        let fd: Int32 = path == "-" ? 0 : open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Failure(path: path, operation: "open", errno: errno) }
        defer { if fd != 0 { close(fd) } }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw Failure(path: path, operation: "read", errno: errno)
            }
            if n == 0 { break }
            out.append(contentsOf: buf[0..<n])
            if out.count > limit { return (out, true) }
        }
        return (out, false)
    }

    public static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }
}

extension MapFile {
    /// Reads and validates a map file. `path` "-" reads standard input.
    public static func read(path: String) throws -> MapSnapshot {
        let r: (bytes: [UInt8], truncated: Bool)
        do {
            r = try AtomicFile.read(path: path, limit: 64 << 20)
        } catch {
            throw error.errno == ENOENT && error.operation == "open"
                ? MapFileError.notFound(path: path) : MapFileError.io(path: path, operation: error.operation, errno: error.errno)
        }
        guard !r.truncated else { throw MapFileError.malformed(path: path, reason: "larger than 64 MiB") }
        return try decode(r.bytes, path: path == "-" ? "<stdin>" : path)
    }

    /// Writes the map atomically and durably (see `AtomicFile.write`): a reader sees the old map
    /// or the new one, never a torn one.
    public static func write(_ s: MapSnapshot, to path: String) throws {
        do {
            try AtomicFile.write(encode(s), to: path)
        } catch {
            throw MapFileError.io(path: error.path, operation: error.operation, errno: error.errno)
        }
    }
}
