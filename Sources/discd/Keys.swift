import ArgumentParser
import Auth
import Cluster
import Crypto
import ExtrasBase64
import Glibc
import ServiceLifecycle
import UnixSignals

/// The cluster key file (`--key-file PATH`, docs/SECURITY.md): one base64 key of 32 bytes per line,
/// the first primary; a regular file that neither group nor others may read.
enum KeyFile {
    static func load(_ path: String) throws(ConfigError) -> Keyring {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw ConfigError("key file \(path): \(errnoText())") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw ConfigError("key file \(path): \(errnoText())") }
        guard st.st_mode & S_IFMT == S_IFREG else { throw ConfigError("key file \(path): \(KeyError.notRegularFile)") }
        guard st.st_mode & 0o077 == 0 else {
            throw ConfigError("key file \(path): \(KeyError.permissions(mode: st.st_mode & 0o777))")
        }
        guard st.st_size <= 64 * 1024 else { throw ConfigError("key file \(path): larger than 64 KiB") }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size) + 1)
        let n = read(fd, &bytes, bytes.count)
        guard n >= 0 else { throw ConfigError("key file \(path): \(errnoText())") }
        do {
            return try Keyring.parse(String(decoding: bytes[0..<n], as: UTF8.self))
        } catch {
            throw ConfigError("key file \(path): \(error)")
        }
    }

    /// A new key file with one fresh key, mode 0600; never overwrites.
    static func generate(_ path: String) throws(ConfigError) -> ClusterKey {
        let raw = SymmetricKey(size: .bits256).withUnsafeBytes { Array($0) }
        let key = try! ClusterKey(bytes: raw)
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw ConfigError("cannot create \(path): \(errnoText())") }
        let line = Array((Base64.encodeToString(bytes: raw) + "\n").utf8)
        let ok = ControlClient.writeAll(fd, line) && fsync(fd) == 0
        close(fd)
        guard ok else { throw ConfigError("cannot write \(path): \(errnoText())") }
        return key
    }
}

/// `discd keygen PATH`: writes a new cluster key file (mode 0600) and prints the key's ID.
struct KeygenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "discd keygen",
        abstract: "Write a new cluster key (32 random bytes, base64) to a new file of mode 0600.",
        discussion: """
            Copy the file to every node (keeping mode 0600) and start discd with --key-file PATH. To \
            rotate keys on a running cluster, see docs/SECURITY.md: add the new key as a second line \
            everywhere, SIGHUP; move it first, SIGHUP; remove the old line, SIGHUP.
            """)

    @Argument(help: "The key file to create (it must not exist).")
    var path: String

    func run() async throws {
        let key = try KeyFile.generate(path)
        ControlClient.emit("key \(String(key.id, radix: 16)) written to \(path)")
    }
}

/// SIGHUP: reads the key file again and hands the new keyring to the node; a bad file is reported
/// and the keys in use are kept.
struct KeyReloadService: Service {
    let path: String?
    let sink: LogSink
    let driver: NodeDriver

    func run() async throws {
        for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
            guard let path else {
                sink.write(DaemonEvent.keysReloadFailed(path: "", error: "no --key-file: nothing to reload"))
                continue
            }
            do {
                let ring = try KeyFile.load(path)
                driver.setKeyring(ring)
                sink.write(DaemonEvent.keysReloaded(path: path, ids: ring.keys.map(\.id)))
            } catch {
                sink.write(DaemonEvent.keysReloadFailed(path: path, error: error.description))
            }
        }
    }
}
