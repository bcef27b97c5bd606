#!/usr/bin/env node
// Which source address does a datagram arrive with? (the end-to-end scripts' NAT check, plain Node)
//   serve <port> <udp4|udp6>  prints "up" once bound, answers the first datagram with the sender's address
//                             as the receiver saw it, then exits (gives up after 10 s)
//   ask <address> <port>      sends until an answer comes (at most 2 s) and prints it; exit 2 without one
'use strict';
const dgram = require('node:dgram');

const [cmd, a, b] = process.argv.slice(2);
if (cmd === 'serve') {
  const s = dgram.createSocket(b === 'udp6' ? 'udp6' : 'udp4');
  const giveUp = setTimeout(() => process.exit(3), 10_000);
  s.on('message', (_m, from) => {
    s.send(from.address, from.port, from.address, () => {
      clearTimeout(giveUp);
      s.close();
    });
  });
  s.bind(Number(a), () => console.log('up'));
} else if (cmd === 'ask') {
  const s = dgram.createSocket(a.includes(':') ? 'udp6' : 'udp4');
  let tries = 0;
  const t = setInterval(() => {
    if (++tries > 40) process.exit(2);
    s.send('x', Number(b), a);
  }, 50);
  s.on('message', (m) => {
    console.log(m.toString());
    clearInterval(t);
    s.close();
  });
} else {
  console.error('usage: udp-echo.js serve <port> <udp4|udp6> | ask <address> <port>');
  process.exit(64);
}
