import CohortClient
import CohortCore
@testable import CohortOutbox
import CohortPosix
import Foundation
import XCTest

/// A Redis that requires a password (`requirepass`, or an ACL user), as production ones do:
/// `redis://[USER]:PASSWORD@HOST:PORT` or `COHORT_REDIS_PASSWORD`. Before, the sink, the stream
/// reader and the demo services could not log in at all, and every command met `NOAUTH`.
final class RedisAuthTests: XCTestCase {
    func testRedisURLsWithALogin() throws {
        let plain = try parseRedisURL("redis://h:6380", passwordFromEnvironment: nil)
        XCTAssertEqual(plain, RedisEndpoint(host: "h", port: 6380, user: nil, password: nil))
        XCTAssertNil(plain.authCommand)
        let pw = try parseRedisURL("redis://:s3cret@h:6380", passwordFromEnvironment: nil)
        XCTAssertEqual(pw, RedisEndpoint(host: "h", port: 6380, user: nil, password: "s3cret"))
        XCTAssertEqual(pw.authCommand, ["AUTH", "s3cret"])
        XCTAssertEqual(pw.displayURL, "redis://:***@h:6380", "the password is never shown")
        let acl = try parseRedisURL("redis://relay:p%40ss%3Aw@h/", passwordFromEnvironment: "ignored")
        XCTAssertEqual(acl, RedisEndpoint(host: "h", port: 6379, user: "relay", password: "p@ss:w"))
        XCTAssertEqual(acl.authCommand, ["AUTH", "relay", "p@ss:w"])
        XCTAssertEqual(acl.displayURL, "redis://relay:***@h:6379")
        XCTAssertEqual(try parseRedisURL("redis://h", passwordFromEnvironment: "from-env").password, "from-env",
                       "a URL without a password takes COHORT_REDIS_PASSWORD")
        for bad in ["redis://user@h", "redis://:@h", "redis://:%zz@h", "redis://:pw@", "redis://:pw@:1", "redis://:pw@h:0", "redis://h/0"] {
            XCTAssertThrowsError(try parseRedisURL(bad, passwordFromEnvironment: nil), bad) { e in
                XCTAssertFalse("\(e)".contains("pw"), "an error must not echo the password: \(e)")
                XCTAssertTrue("\(e)".contains("redis://[USER]:PASSWORD@HOST:PORT"), "\(e)")
            }
        }
    }

    func testTheSinkAndTheStreamReaderLogInToAPasswordProtectedRedis() throws {
        let dir = tempPath("redis-auth-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        let password = "p@ss:w0rd"
        let redis = try ThrowawayRedis(dir: dir, password: password)

        // Without the password every command is refused; with a wrong one the login is, in
        // Redis's words and without the password in the message.
        let anonymous = try RedisConnection(url: redis.anonymousURL)
        XCTAssertThrowsError(try anonymous.command(["PING"])) { XCTAssertTrue("\($0)".contains("NOAUTH"), "\($0)") }
        anonymous.close()
        XCTAssertThrowsError(try RedisConnection(url: "redis://:wrong@127.0.0.1:\(redis.port)")) { e in
            XCTAssertTrue("\(e)".contains("WRONGPASS") || "\(e)".contains("invalid password"), "\(e)")
            XCTAssertFalse("\(e)".contains("wrong"), "\(e)")
        }

        // The relay's sink appends through the login.
        let loop = try EventLoop()
        loop.startThread()
        defer { loop.stopAndJoin() }
        /// One message through a sink to this Redis, and the sink's answer.
        func deliverOne(_ url: String, id: Int64) throws -> (name: String, result: SinkResult?) {
            let sink = try RedisStreamSink(url: url, stream: "auth-test", loop: loop)
            defer { sink.shutdown() }
            let answered = DispatchSemaphore(value: 0)
            var result: SinkResult?
            loop.execute {
                sink.deliver([OutboxMessage(id: id, source: "s", topic: "t", key: "k", payload: String(id), createdMs: 0)]) {
                    result = $0
                    answered.signal()
                }
            }
            XCTAssertEqual(answered.wait(timeout: .now() + 10), .success)
            return (sink.name, result)
        }
        let delivered = try deliverOne(redis.url, id: 1)
        XCTAssertFalse(delivered.name.contains(password), delivered.name)
        guard case .outcomes(let o)? = delivered.result else { return XCTFail("\(String(describing: delivered.result))") }
        XCTAssertEqual(o, [.acknowledged])

        // A wrong password is an outage to the relay (sent again later), in Redis's words.
        let refusal = try deliverOne("redis://:wrong@127.0.0.1:\(redis.port)", id: 2).result
        guard case .unavailable(let why)? = refusal else { return XCTFail("\(String(describing: refusal))") }
        XCTAssertTrue(why.contains("logging in to redis://:***@127.0.0.1"), why)

        // A consumer's stream reader reads it through the login.
        let applied = DispatchSemaphore(value: 0)
        let reader = try RedisStreamReader(url: redis.url, stream: "auth-test", group: "g", consumer: "c",
                                           inbox: try Inbox(path: dir + "/consumer.db", consumer: "c")) { _, m in
            if m.payload == "1" { applied.signal() }
        }
        let thread = try PosixThread(name: "reader") { reader.run() }
        _ = thread
        addTeardownBlock { reader.stop() }
        XCTAssertEqual(applied.wait(timeout: .now() + 10), .success, "the reader applied the message")
    }
}
