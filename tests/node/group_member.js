// One KafkaJS consumer-group member in its own process, driven by
// tests/python/test_groups_kafkajs.py. It speaks the same line protocol as
// tests/python/group_member.py: one JSON object per line on stdout (`ev` names the
// event), commands on stdin.
//
// Events: started, assigned {parts, owned, protocol, assigner, leader, leader_id,
// member_id} (KafkaJS rebalances eagerly: each GROUP_JOIN carries the whole new
// assignment), consumed {recs: [[partition, offset, value]]}, committed {offsets:
// {partition: next offset}}, commit_error {offsets, error}, error {error}, nocommit,
// closed.
// Commands: `nocommit` (stop committing), `close` (disconnect: leaves the group; exit 0).
//
// Offsets are committed (commitOffsets, synchronously awaited) at the end of every
// batch, so a member that disconnects leaves nothing consumed but uncommitted.
'use strict'

const readline = require('readline')
const { Kafka, logLevel } = require('kafkajs')

const cfg = JSON.parse(process.argv[2])

function emit(ev, fields = {}) {
  process.stdout.write(JSON.stringify({ ev, t: Date.now() / 1000, ...fields }) + '\n')
}

// KafkaJS logs go to stderr: stdout carries only the JSON lines.
const logCreator = () => ({ namespace, level, label, log }) => {
  const { message, ...extra } = log
  process.stderr.write(`${label} [${namespace}] ${message} ${JSON.stringify(extra)}\n`)
}

async function main() {
  const kafka = new Kafka({
    clientId: cfg.name,
    brokers: cfg.bootstrap.split(","),
    logLevel: logLevel.INFO,
    logCreator,
    retry: { retries: 10, initialRetryTime: 100, maxRetryTime: 2000 },
  })
  const consumer = kafka.consumer({
    groupId: cfg.group,
    sessionTimeout: cfg.session_timeout_ms || 6000,
    heartbeatInterval: cfg.heartbeat_interval_ms || 1000,
    rebalanceTimeout: cfg.max_poll_interval_ms || 30000,
    maxWaitTimeInMs: 100,
  })
  const topic = cfg.topic
  let committing = true
  let owned = []
  const committed = {}
  let closing = null

  consumer.on(consumer.events.GROUP_JOIN, (e) => {
    owned = ((e.payload.memberAssignment || {})[topic] || []).slice().sort((a, b) => a - b)
    emit('assigned', {
      parts: owned,
      owned,
      protocol: 'EAGER',
      assigner: e.payload.groupProtocol,
      leader: e.payload.isLeader,
      leader_id: e.payload.leaderId,
      member_id: e.payload.memberId,
    })
  })
  consumer.on(consumer.events.CRASH, (e) => {
    emit('error', { error: String(e.payload.error), restart: e.payload.restart })
  })

  const rl = readline.createInterface({ input: process.stdin })
  const close = async () => {
    if (!closing) {
      closing = (async () => {
        await consumer.disconnect()
        emit('closed')
        process.exit(0)
      })()
    }
    return closing
  }
  rl.on('line', (line) => {
    const cmd = line.trim()
    if (cmd === 'nocommit') {
      committing = false
      emit('nocommit')
    } else if (cmd === 'close') {
      close().catch((e) => {
        emit('error', { error: `disconnect: ${e}` })
        process.exit(3)
      })
    }
  })
  rl.on('close', () => close().catch(() => process.exit(3)))

  await consumer.connect()
  await consumer.subscribe({ topic, fromBeginning: true })
  emit('started', { client: 'kafkajs', name: cfg.name, pid: process.pid })
  await consumer.run({
    autoCommit: false,
    eachBatch: async ({ batch }) => {
      if (batch.messages.length === 0) return
      const p = batch.partition
      const recs = batch.messages.map((m) => [p, Number(m.offset), m.value ? m.value.toString() : ''])
      emit('consumed', { recs })
      if (!committing) return
      const next = (BigInt(batch.messages[batch.messages.length - 1].offset) + 1n).toString()
      try {
        await consumer.commitOffsets([{ topic, partition: p, offset: next }])
        committed[p] = Number(next)
        emit('committed', { offsets: { [p]: Number(next) } })
      } catch (e) {
        // Not rethrown: KafkaJS would deliver the batch again to this member. The next
        // successful commit of the partition covers these offsets.
        emit('commit_error', { offsets: { [p]: Number(next) }, error: `${e.type || e.name}: ${e.message}` })
      }
    },
  })
}

main().catch((e) => {
  emit('error', { error: `fatal: ${e && e.stack ? e.stack : e}` })
  process.exit(2)
})
