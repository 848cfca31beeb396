import Glibc

/// An open file descriptor with positional I/O. Positional reads and writes need no shared file
/// offset, so one thread may write while another reads or syncs.
public final class PosixFile {
    public let path: String
    private var fd: Int32

    /// Opens `path` read-write (O_CLOEXEC so children never inherit it); `create` adds O_CREAT.
    /// `readOnly` opens it for reading only (writes then fail with EBADF): what a reader must
    /// use, since read-write needs write permission and a writable filesystem. A token file of
    /// mode 0400, a log on a filesystem the kernel remounted read-only after disk errors, or one
    /// an operator may read but not write, were refused ("Permission denied", "Read-only file
    /// system") by readers that only read.
    public init(path: String, create: Bool, readOnly: Bool = false) throws {
        precondition(!(create && readOnly), "a file created read-only")
        self.path = path
        var flags = (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC
        if create { flags |= O_CREAT }
        var opened: Int32
        repeat { opened = Glibc.open(path, flags, mode_t(0o644)) } while opened < 0 && errno == EINTR
        guard opened >= 0 else { throw PosixError.current("open", path: path) }
        fd = opened
    }

    public static func open(_ path: String, create: Bool, readOnly: Bool = false) throws -> PosixFile {
        try PosixFile(path: path, create: create, readOnly: readOnly)
    }

    deinit { close() }

    /// Reads up to `count` bytes at `offset`; fewer only at end of file.
    public func pread(count: Int, offset: Int) throws -> [UInt8] {
        precondition(count >= 0 && offset >= 0, "negative read")
        precondition(fd >= 0, "read of closed file \(path)")
        if count == 0 { return [] }
        var result = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = result.withUnsafeMutableBytes { buffer in
                Glibc.pread(fd, buffer.baseAddress! + done, count - done, off_t(offset + done))
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw PosixError.current("pread", path: path)
            }
            if n == 0 { break }
            done += n
        }
        if done < count { result.removeLast(count - done) }
        return result
    }

    /// Writes all of `bytes` at `offset`, looping on short writes and EINTR.
    public func pwrite(_ bytes: [UInt8], offset: Int) throws {
        precondition(offset >= 0, "negative write offset")
        precondition(fd >= 0, "write to closed file \(path)")
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { buffer in
                Glibc.pwrite(fd, buffer.baseAddress! + done, bytes.count - done, off_t(offset + done))
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw PosixError.current("pwrite", path: path)
            }
            // A zero-byte write of a non-empty buffer would loop forever; the kernel reports
            // ENOSPC as an error, so zero here means something we cannot make progress on.
            if n == 0 { throw PosixError("pwrite", errno: EIO, path: path) }
            done += n
        }
    }

    public func size() throws -> Int {
        precondition(fd >= 0, "size of closed file \(path)")
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw PosixError.current("fstat", path: path) }
        return Int(info.st_size)
    }

    public func truncate(to size: Int) throws {
        precondition(size >= 0, "negative truncate")
        precondition(fd >= 0, "truncate of closed file \(path)")
        var rc: Int32
        repeat { rc = ftruncate(fd, off_t(size)) } while rc != 0 && errno == EINTR
        guard rc == 0 else { throw PosixError.current("ftruncate", path: path) }
    }

    /// Makes written data durable (and the metadata needed to read it back, such as the size).
    public func fdatasync() throws {
        precondition(fd >= 0, "sync of closed file \(path)")
        // No retry on EINTR or anything else: after a failed sync the kernel may have dropped
        // the dirty pages, so a later success would not mean the data is on disk.
        guard Glibc.fdatasync(fd) == 0 else { throw PosixError.current("fdatasync", path: path) }
    }

    /// Asks the kernel to drop the file's cached pages, so that the next reads come from the
    /// disk (dirty pages are written first, then dropped once clean).
    public func dropCachedPages() throws {
        precondition(fd >= 0, "advice on closed file \(path)")
        let result = posix_fadvise(fd, 0, 0, Int32(POSIX_FADV_DONTNEED))
        guard result == 0 else { throw PosixError("posix_fadvise", errno: result, path: path) }
    }

    public func fsync() throws {
        precondition(fd >= 0, "sync of closed file \(path)")
        guard Glibc.fsync(fd) == 0 else { throw PosixError.current("fsync", path: path) }
    }

    /// Idempotent. Errors from close are ignored: data that matters was synced before.
    public func close() {
        if fd >= 0 {
            _ = Glibc.close(fd)
            fd = -1
        }
    }
}

/// Directory and whole-file operations.
public enum PosixFS {
    /// Entry names in `path`, without "." and "..", in no particular order.
    public static func listDirectory(_ path: String) throws -> [String] {
        guard let dir = opendir(path) else { throw PosixError.current("opendir", path: path) }
        defer { closedir(dir) }
        var names: [String] = []
        while true {
            errno = 0
            guard let entry = readdir(dir) else {
                if errno != 0 { throw PosixError.current("readdir", path: path) }
                break
            }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Creates `path`; an existing directory is fine. With `intermediate`, creates parents too.
    public static func createDirectory(_ path: String, intermediate: Bool = true) throws {
        if intermediate {
            var prefix = path.hasPrefix("/") ? "/" : ""
            for component in path.split(separator: "/") {
                prefix += component
                if mkdir(prefix, mode_t(0o755)) != 0 && errno != EEXIST {
                    throw PosixError.current("mkdir", path: prefix)
                }
                prefix += "/"
            }
        } else if mkdir(path, mode_t(0o755)) != 0 && errno != EEXIST {
            throw PosixError.current("mkdir", path: path)
        }
        guard isDirectory(path) else { throw PosixError("mkdir", errno: ENOTDIR, path: path) }
    }

    /// Removes a file or an empty directory.
    public static func remove(_ path: String) throws {
        if unlink(path) == 0 { return }
        if errno == EISDIR || errno == EPERM, rmdir(path) == 0 { return }
        throw PosixError.current("remove", path: path)
    }

    public static func rename(_ from: String, _ to: String) throws {
        guard Glibc.rename(from, to) == 0 else { throw PosixError.current("rename \(from) to", path: to) }
    }

    /// Makes the directory's entries (creations, removals, renames) durable.
    /// The directory holding `path` ("." for a plain name, "/" for a name at the root; a
    /// trailing slash does not count).
    public static func parentDirectory(of path: String) -> String {
        var trimmed = Substring(path)
        while trimmed.count > 1 && trimmed.hasSuffix("/") { trimmed = trimmed.dropLast() }
        guard let slash = trimmed.lastIndex(of: "/") else { return "." }
        return slash == trimmed.startIndex ? "/" : String(trimmed[..<slash])
    }

    public static func fsyncDirectory(_ path: String) throws {
        let fd = Glibc.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw PosixError.current("open", path: path) }
        defer { _ = Glibc.close(fd) }
        guard Glibc.fsync(fd) == 0 else { throw PosixError.current("fsync", path: path) }
    }

    public static func exists(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0
    }

    /// The size in bytes of what `path` names (following symlinks); nil when it does not exist.
    /// A stat, no descriptor: closing a descriptor of a file would drop this process's POSIX
    /// locks on it (SQLite's among them).
    public static func fileSizeBytes(_ path: String) -> Int? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return Int(info.st_size)
    }

    /// Throws ENOENT or ENOTDIR unless `path` is a directory (following symlinks); creates nothing.
    public static func requireDirectory(_ path: String) throws {
        guard !isDirectory(path) else { return }
        throw PosixError("opendir", errno: exists(path) ? ENOTDIR : ENOENT, path: path)
    }

    public static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }

    /// What `path` is (following symlinks) when it exists and is not a regular file: "a FIFO",
    /// "a character device", and so on; nil for a regular file or a path that does not exist.
    public static func nonRegularFileKind(_ path: String) -> String? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        switch info.st_mode & S_IFMT {
        case S_IFREG: return nil
        case S_IFDIR: return "a directory"
        case S_IFIFO: return "a FIFO"
        case S_IFCHR: return "a character device"
        case S_IFBLK: return "a block device"
        case S_IFSOCK: return "a socket"
        default: return "a special file"
        }
    }

    /// Replaces `path` with `bytes` so that a crash leaves either the old or the new content:
    /// write a temporary file, sync it, rename it over, sync the directory.
    public static func writeFileAtomically(_ path: String, _ bytes: [UInt8]) throws {
        let temporary = path + ".tmp"
        let file = try PosixFile(path: temporary, create: true)
        do {
            try file.truncate(to: 0)
            try file.pwrite(bytes, offset: 0)
            try file.fsync()
            file.close()
            try rename(temporary, path)
        } catch {
            file.close()
            _ = unlink(temporary)
            throw error
        }
        try fsyncDirectory(parentDirectory(of: path))
    }

    /// The whole file, opened for reading only (a token file of mode 0400 is readable).
    public static func readFile(_ path: String) throws -> [UInt8] {
        let file = try PosixFile(path: path, create: false, readOnly: true)
        defer { file.close() }
        return try file.pread(count: try file.size(), offset: 0)
    }

}

extension PosixError {
    /// An injected I/O failure (EIO), for fault testing: what a dying disk reports.
    public static func injectedIOError(_ operation: String, path: String?) -> PosixError {
        PosixError(operation, errno: EIO, path: path)
    }
}

/// An exclusive advisory lock on a file (flock), held per open file description: two opens of
/// the same path conflict even within one process. A blocked `lock()` sleeps in the kernel and
/// is woken when the holder releases, so waiters do not poll.
public final class FileLock {
    public let path: String
    private var fd: Int32

    public init(path: String) throws {
        self.path = path
        var opened: Int32
        repeat { opened = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC, mode_t(0o644)) } while opened < 0 && errno == EINTR
        guard opened >= 0 else { throw PosixError.current("open", path: path) }
        fd = opened
    }

    deinit { if fd >= 0 { Glibc.close(fd) } }

    public func lock() throws {
        while flock(fd, LOCK_EX) != 0 {
            if errno == EINTR { continue }
            throw PosixError.current("flock", path: path)
        }
    }

    /// Takes the lock if nobody holds it; false at once if somebody does.
    public func tryLock() throws -> Bool {
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            if errno == EINTR { continue }
            if errno == EWOULDBLOCK { return false }
            throw PosixError.current("flock", path: path)
        }
        return true
    }

    public func unlock() {
        _ = flock(fd, LOCK_UN)
    }
}
