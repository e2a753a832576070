//! Handoff between cores: a frame that arrives on a core that does not own its flow is
//! copied into a bounded single-producer single-consumer ring to the owner (one ring per
//! ordered pair of workers). A full ring is a counted drop, never a wait.
//!
//! Frames are copied rather than passed by UMEM address: each worker owns its UMEM, so
//! no frame ever has to travel back to the pool it came from. veth and NICs without
//! symmetric RSS send the two directions of a flow to different queues; the copy costs
//! a memcpy of the frame on that path only.

/// Largest frame that can be handed off (a standard Ethernet frame with two VLAN tags
/// fits; jumbo frames that would need a handoff are dropped and counted).
pub const MAX_FRAME: usize = 2048;

/// One handed-off frame.
pub struct Item {
    pub len: u16,
    /// Side it arrived on: 0 outside, 1 inside.
    pub side: u8,
    pub data: [u8; MAX_FRAME],
}

pub type Producer = rtrb::Producer<Item>;
pub type Consumer = rtrb::Consumer<Item>;
/// `ends[i][j]`: the end of the ring between workers i and j held by worker i.
pub type Mesh<T> = Vec<Vec<Option<T>>>;

/// The rings of `n` workers: `producers[i][j]` sends from worker i to worker j,
/// `consumers[j][i]` receives it (`None` on the diagonal).
pub fn mesh(n: usize, capacity: usize) -> (Mesh<Producer>, Mesh<Consumer>) {
    let mut producers: Mesh<Producer> = (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut consumers: Mesh<Consumer> = (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    for (i, row) in producers.iter_mut().enumerate() {
        for (j, slot) in row.iter_mut().enumerate() {
            if i != j {
                let (p, c) = rtrb::RingBuffer::new(capacity);
                *slot = Some(p);
                consumers[j][i] = Some(c);
            }
        }
    }
    (producers, consumers)
}

/// Copies `frame` into the ring; false when the ring is full or the frame too large.
pub fn send(p: &mut Producer, side: u8, frame: &[u8]) -> Result<(), Refused> {
    if frame.len() > MAX_FRAME {
        return Err(Refused::TooLarge);
    }
    let mut item = Item { len: frame.len() as u16, side, data: [0; MAX_FRAME] };
    item.data[..frame.len()].copy_from_slice(frame);
    p.push(item).map_err(|_| Refused::Full)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Full,
    TooLarge,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_in_order_and_a_full_ring_refuses() {
        let (mut p, mut c) = mesh(2, 2);
        let p01 = p[0][1].as_mut().unwrap();
        send(p01, 0, &[1, 2, 3]).unwrap();
        send(p01, 1, &[4]).unwrap();
        assert_eq!(send(p01, 0, &[5]), Err(Refused::Full));
        assert_eq!(send(p01, 0, &[0; MAX_FRAME + 1]), Err(Refused::TooLarge));
        let c10 = c[1][0].as_mut().unwrap();
        let a = c10.pop().unwrap();
        assert_eq!((&a.data[..a.len as usize], a.side), (&[1u8, 2, 3][..], 0));
        let b = c10.pop().unwrap();
        assert_eq!((&b.data[..b.len as usize], b.side), (&[4u8][..], 1));
        assert!(c[0][0].is_none() && p[1][1].is_none());
    }
}
